"""Designated facilities: registration, agreements, credit rating and status."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from cardsvc.audit.services import AuditLog
from cardsvc.db import Pool, transaction
from cardsvc.errors import Conflict, InvalidRequest, NotFound
from cardsvc.facilities.models import (
    ChangeCreditRating,
    CreateFacility,
    CreditRatingChange,
    CreditRatingHistory,
    Facility,
    UpdateFacility,
)
from cardsvc.listing import fetch_page
from cardsvc.paging import MAX_PAGE_SIZE, Page, PageQuery, Sorts, Where
from cardsvc.web.caller import Caller

_COLUMNS = "fixmedins_code, fixmedins_name, type, level, agreements, credit_rating, status"


def _check_level(type_: str, level: str | None) -> None:
    if (type_ == "hospital") != (level is not None):
        raise InvalidRequest(
            "hospitals have a level (community, 1, 2, 3); pharmacies have none",
            code="INVALID_LEVEL",
        )


def _facility(row: asyncpg.Record) -> Facility:
    return Facility(**dict(row))


class FacilityRegistry:
    def __init__(self, pool: Pool, audit: AuditLog) -> None:
        self._pool, self._audit = pool, audit

    async def create(self, caller: Caller, req: CreateFacility) -> Facility:
        _check_level(req.type, req.level)
        async with transaction(self._pool) as conn:
            try:
                row = await conn.fetchrow(
                    f"INSERT INTO facilities ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                    f" RETURNING {_COLUMNS}",
                    req.fixmedins_code,
                    req.fixmedins_name,
                    req.type,
                    req.level,
                    sorted(set(req.agreements)),
                    req.credit_rating,
                    req.status,
                )
            except asyncpg.UniqueViolationError:
                raise Conflict("facility code already registered", code="FACILITY_EXISTS") from None
            facility = _facility(row)
            await self._audit.record(
                conn,
                caller,
                action="facility.created",
                object_type="facility",
                object_id=req.fixmedins_code,
                data=msgspec.structs.asdict(facility),
            )
        return facility

    async def update(self, caller: Caller, code: str, req: UpdateFacility) -> Facility:
        changes: dict[str, Any] = {
            k: v for k, v in msgspec.structs.asdict(req).items() if v is not msgspec.UNSET
        }
        if "agreements" in changes:
            changes["agreements"] = sorted(set(changes["agreements"]))
        async with transaction(self._pool) as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM facilities WHERE fixmedins_code = $1 FOR NO KEY UPDATE",
                code,
            )
            if row is None:
                raise NotFound("no such facility", code="FACILITY_NOT_FOUND")
            merged = {**dict(row), **changes}
            _check_level(merged["type"], merged["level"])
            if changes:
                assignments = ", ".join(f"{k} = ${i}" for i, k in enumerate(changes, start=2))
                row = await conn.fetchrow(
                    f"UPDATE facilities SET {assignments}, updated_at = now()"
                    f" WHERE fixmedins_code = $1 RETURNING {_COLUMNS}",
                    code,
                    *changes.values(),
                )
                await self._audit.record(
                    conn,
                    caller,
                    action="facility.updated",
                    object_type="facility",
                    object_id=code,
                    data=changes,
                )
        return _facility(row)

    async def get(self, code: str) -> Facility:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM facilities WHERE fixmedins_code = $1",
            code,
        )
        if row is None:
            raise NotFound("no such facility", code="FACILITY_NOT_FOUND")
        return _facility(row)


FACILITY_SORTS = Sorts(
    fields={
        "fixmedins_code": "fixmedins_code",
        "fixmedins_name": "fixmedins_name",
        "credit_rating": "credit_rating",
        "created_at": "created_at",
    },
    default="fixmedins_code",
    tiebreak="fixmedins_code",
)


class FacilityFilter(msgspec.Struct, frozen=True, kw_only=True):
    q: str | None = None  # a code prefix or a name fragment
    type: str | None = None
    status: str | None = None
    credit_rating: str | None = None


def _like(fragment: str) -> str:
    return fragment.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class FacilityRatings:
    """Listing facilities, and the reviewer's credit ratings with their history."""

    def __init__(self, pool: Pool, audit: AuditLog) -> None:
        self._pool, self._audit = pool, audit

    async def search(self, filters: FacilityFilter, page: PageQuery) -> Page[Facility]:
        where = (
            Where()
            .when(filters.type, "type = {}")
            .when(filters.status, "status = {}")
            .when(filters.credit_rating, "credit_rating = {}")
        )
        if filters.q is not None:
            fragment = _like(filters.q)
            where.add(
                "(fixmedins_code LIKE {} OR fixmedins_name LIKE {})",
                fragment + "%",
                "%" + fragment + "%",
            )
        rows, total = await fetch_page(
            self._pool, columns=_COLUMNS, source="facilities", where=where, page=page
        )
        return page.answer([_facility(r) for r in rows], total)

    async def change_rating(self, caller: Caller, code: str, req: ChangeCreditRating) -> Facility:
        async with transaction(self._pool) as conn:
            before = await conn.fetchval(
                "SELECT credit_rating FROM facilities WHERE fixmedins_code = $1 FOR NO KEY UPDATE",
                code,
            )
            if before is None:
                raise NotFound("no such facility", code="FACILITY_NOT_FOUND")
            row = await conn.fetchrow(
                "UPDATE facilities SET credit_rating = $2, updated_at = now()"
                f" WHERE fixmedins_code = $1 RETURNING {_COLUMNS}",
                code,
                req.credit_rating,
            )
            await conn.execute(
                "INSERT INTO facility_credit_ratings (fixmedins_code, from_rating, to_rating,"
                " reason, actor, operator_id, operator_name)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                code,
                before,
                req.credit_rating,
                req.reason,
                caller.actor,
                caller.operator_id,
                caller.operator_name,
            )
            await self._audit.record(
                conn,
                caller,
                action="facility.credit_rating_changed",
                object_type="facility",
                object_id=code,
                data={"from": before, "to": req.credit_rating, "reason": req.reason},
            )
        return _facility(row)

    async def rating_history(self, code: str) -> CreditRatingHistory:
        async with self._pool.acquire() as conn:
            if not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM facilities WHERE fixmedins_code = $1)", code
            ):
                raise NotFound("no such facility", code="FACILITY_NOT_FOUND")
            rows = await conn.fetch(
                "SELECT from_rating, to_rating, reason, operator_id, operator_name, actor, at"
                " FROM facility_credit_ratings WHERE fixmedins_code = $1"
                " ORDER BY at DESC, change_id DESC LIMIT $2",
                code,
                MAX_PAGE_SIZE,
            )
        return CreditRatingHistory(items=[CreditRatingChange(**dict(r)) for r in rows])
