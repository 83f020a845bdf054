"""The list of stored clearing runs, newest first, read off each run's stored summary."""

from __future__ import annotations

import datetime as dt

from cardsvc.clearing.models import ClearingRunSummary
from cardsvc.db import Pool
from cardsvc.listing import fetch_page
from cardsvc.paging import Page, PageQuery, Sorts, Where

RUN_SORTS = Sorts(
    fields={"clearing_date": "clearing_date"}, default="-clearing_date", tiebreak="clearing_date"
)
_COLUMNS = """clearing_date, created_at,
    (summary->>'settlements_cleared')::bigint AS settlements_cleared,
    (summary->>'reversals_netted')::bigint AS reversals_netted,
    (summary->>'net_total')::bigint AS net_total,
    jsonb_array_length(summary->'facilities') AS facilities,
    coalesce(jsonb_array_length(summary->'held'), 0) AS held"""


class ClearingRuns:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def search(
        self, start: dt.date | None, end: dt.date | None, page: PageQuery
    ) -> Page[ClearingRunSummary]:
        where = Where().when(start, "clearing_date >= {}").when(end, "clearing_date <= {}")
        rows, total = await fetch_page(
            self._pool, columns=_COLUMNS, source="clearing_runs", where=where, page=page
        )
        return page.answer([ClearingRunSummary(**dict(r)) for r in rows], total)
