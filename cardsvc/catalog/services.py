"""The catalog: bulk upsert by item code."""

from __future__ import annotations

from cardsvc.audit.services import AuditLog
from cardsvc.catalog.models import ItemsUpserted, PutItems
from cardsvc.db import Pool, transaction
from cardsvc.errors import InvalidRequest
from cardsvc.web.caller import ADMIN


class Catalog:
    def __init__(self, pool: Pool, audit: AuditLog) -> None:
        self._pool, self._audit = pool, audit

    async def upsert(self, req: PutItems) -> ItemsUpserted:
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
            await self._audit.append(
                conn,
                actor=ADMIN.actor,
                action="catalog.upserted",
                object_type="catalog",
                object_id="items",
                data={"count": len(codes), "codes": codes[:100]},
            )
        return ItemsUpserted(upserted=len(codes))
