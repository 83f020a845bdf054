"""The auditor's list of audit entries: filtered by time, actor, action and object.

Entries are shown as stored (their ``data`` is the canonical JSON the chain hashes, which
never holds a secret or an identity number in clear); ``chain`` and ``seq`` locate each
one for ``GET /v1/audit/verify``. A list always spans at most a year of entries (``from``
defaults to 30 days before ``to``) so that its count stays an index range."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from cardsvc.db import Pool
from cardsvc.listing import fetch_page
from cardsvc.paging import Page, PageQuery, Sorts, Where, day_start

AUDIT_SORTS = Sorts(fields={"at": "at"}, default="-at", tiebreak="(chain, seq)")
DEFAULT_DAYS = 30
_data = msgspec.json.Decoder(dict[str, Any])


class ListedEntry(msgspec.Struct, kw_only=True):
    """An audit entry as the list shows it: its data decoded (``chain.AuditEntry`` keeps
    the stored text, which its hash covers)."""

    chain: int
    seq: int
    at: dt.datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    data: dict[str, Any]


class AuditFilter(msgspec.Struct, frozen=True, kw_only=True):
    start: dt.date
    end: dt.date
    actor: str | None = None
    action: str | None = None
    object_type: str | None = None
    object_id: str | None = None


class AuditEntries:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def search(self, filters: AuditFilter, page: PageQuery) -> Page[ListedEntry]:
        where = (
            Where()
            .add("at >= {}", day_start(filters.start))
            .add("at < {}", day_start(filters.end, after=True))
            .when(filters.actor, "actor = {}")
            .when(filters.action, "action = {}")
            .when(filters.object_type, "object_type = {}")
            .when(filters.object_id, "object_id = {}")
        )
        rows, total = await fetch_page(
            self._pool,
            columns="chain, seq, at, actor, action, object_type, object_id, data",
            source="audit_log",
            where=where,
            page=page,
        )
        items = [ListedEntry(**{**dict(r), "data": _data.decode(r["data"])}) for r in rows]
        return page.answer(items, total)
