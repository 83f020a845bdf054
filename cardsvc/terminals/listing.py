"""The administrator's list of terminals (never a key: only its check value)."""

from __future__ import annotations

import msgspec

from cardsvc.db import Pool
from cardsvc.listing import fetch_page
from cardsvc.paging import Page, PageQuery, Sorts, Where
from cardsvc.terminals.models import TerminalInfo

TERMINAL_SORTS = Sorts(
    fields={"terminal_id": "terminal_id", "created_at": "created_at", "kind": "kind"},
    default="terminal_id",
    tiebreak="terminal_id",
)


class TerminalFilter(msgspec.Struct, frozen=True, kw_only=True):
    fixmedins_code: str | None = None
    kind: str | None = None
    status: str | None = None


class TerminalList:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def search(self, filters: TerminalFilter, page: PageQuery) -> Page[TerminalInfo]:
        where = (
            Where()
            .when(filters.fixmedins_code, "fixmedins_code = {}")
            .when(filters.kind, "kind = {}")
            .when(filters.status, "status = {}")
        )
        rows, total = await fetch_page(
            self._pool,
            columns="terminal_id, kind, fixmedins_code, kcv, status",
            source="terminals",
            where=where,
            page=page,
        )
        return page.answer([TerminalInfo(**dict(r)) for r in rows], total)
