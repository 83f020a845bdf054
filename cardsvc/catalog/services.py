"""The catalog: bulk upsert by item code, and paged reading for terminals and the admin."""

from __future__ import annotations

from cardsvc.audit.services import AuditLog
from cardsvc.catalog.models import (
    CatalogItem,
    CatalogPage,
    CatalogQuery,
    ItemsUpserted,
    PutItems,
)
from cardsvc.db import Pool, transaction
from cardsvc.errors import InvalidRequest
from cardsvc.web.caller import Caller

# Keyset paging in the order of the primary key, so a page reads the index, not the table.
_PAGE = """
SELECT code, name, chrgitm_lv, selfpay_prop, max_price, work_injury FROM catalog_items
WHERE ($1::text IS NULL OR code > $1)
  AND ($2::text IS NULL OR starts_with(code, $2))
  AND ($3::text IS NULL OR strpos(lower(name), lower($3)) > 0)
  AND ($5::text[] IS NULL OR code = ANY($5))
ORDER BY code LIMIT $4
"""


class Catalog:
    def __init__(self, pool: Pool, audit: AuditLog) -> None:
        self._pool, self._audit = pool, audit

    async def upsert(self, caller: Caller, req: PutItems) -> ItemsUpserted:
        codes = [item.code for item in req.items]
        if len(set(codes)) != len(codes):
            raise InvalidRequest("an item code appears twice", code="DUPLICATE_ITEM")
        async with transaction(self._pool) as conn:
            await conn.execute(
                """
                INSERT INTO catalog_items
                    (code, name, chrgitm_lv, selfpay_prop, max_price, work_injury)
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[],
                                     $5::bigint[], $6::bool[])
                ON CONFLICT (code) DO UPDATE SET
                    name = EXCLUDED.name, chrgitm_lv = EXCLUDED.chrgitm_lv,
                    selfpay_prop = EXCLUDED.selfpay_prop, max_price = EXCLUDED.max_price,
                    work_injury = EXCLUDED.work_injury, updated_at = now()
                """,
                codes,
                [i.name for i in req.items],
                [i.chrgitm_lv for i in req.items],
                [i.selfpay_prop for i in req.items],
                [i.max_price for i in req.items],
                [i.work_injury for i in req.items],
            )
            await self._audit.record(
                conn,
                caller,
                action="catalog.upserted",
                object_type="catalog",
                object_id="items",
                data={"count": len(codes), "codes": codes[:100]},
            )
        return ItemsUpserted(upserted=len(codes))

    async def page(self, query: CatalogQuery) -> CatalogPage:
        """Up to ``query.limit`` items in code order; ``next_after`` when more may follow."""
        rows = await self._pool.fetch(
            _PAGE, query.after, query.prefix, query.name, query.limit + 1, query.codes
        )
        items = [CatalogItem(**dict(row)) for row in rows[: query.limit]]
        more = len(rows) > query.limit
        return CatalogPage(items=items, next_after=items[-1].code if more else None)
