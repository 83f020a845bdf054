"""Fund supervision (基金监管): real-time flags, the review queue of settlements held at
C-rated facilities, and the fund report."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Literal

import asyncpg
import msgspec

from cardsvc.audit.services import AuditLog
from cardsvc.db import Connection, Pool, transaction
from cardsvc.errors import Conflict, InvalidRequest, NotFound
from cardsvc.listing import fetch_page
from cardsvc.paging import Page, PageQuery, Sorts, Where, day_start
from cardsvc.settlement.fundparts import (
    first_setl_ids,
    fund_parts,
    settlement_limit,
    within_limits,
)
from cardsvc.settlement.plan import stored_setl_info
from cardsvc.settlement.services import reverse_locked
from cardsvc.supervision.models import (
    DayFigures,
    FlagInfo,
    FundFacilityType,
    FundLine,
    FundReport,
    MaskedPerson,
    Review,
    ReviewDetail,
    ReviewFacility,
    ReviewLine,
    RuleCount,
    TypeCount,
)
from cardsvc.web.caller import Caller

MAX_REPORT_DAYS = 366

# $3: the settlement limit. Settlements above it are left out of every figure and counted
# apart (``out_of_limits``); sums are numeric and become Python integers.
_REPORTED = f"""settlements WHERE setl_date BETWEEN $1 AND $2 AND status = 'settled'
    AND {within_limits("settlements", "$3")}"""
_EXPENDITURE = f"""
WITH s AS (SELECT * FROM {_REPORTED}),
parts AS ({fund_parts("s", "fixmedins_type")})
SELECT fund, fixmedins_type, count(*)::int AS settlements, sum(amount) AS amount
FROM parts GROUP BY fund, fixmedins_type ORDER BY fund, fixmedins_type
"""  # noqa: S608 - constant identifiers
_TOTALS = f"""
WITH o AS (SELECT setl_id FROM settlements
           WHERE setl_date BETWEEN $1 AND $2 AND status = 'settled'
             AND NOT {within_limits("settlements", "$3")})
SELECT count(*) AS settlements, coalesce(sum(medfee_sumamt), 0) AS medfee,
  (SELECT count(*) FROM reversals WHERE revs_date BETWEEN $1 AND $2) AS reversals,
  (SELECT count(*) FROM o) AS out_of_limits,
  (SELECT {first_setl_ids()} FROM o)
    AS out_of_limits_setl_ids
FROM {_REPORTED}
"""  # noqa: S608 - constant identifiers
_PER_DAY = f"""
WITH s AS (SELECT * FROM {_REPORTED}),
parts AS ({fund_parts("s", "setl_date")})
SELECT setl_date AS date, sum(amount) AS amount FROM parts GROUP BY setl_date
"""  # noqa: S608 - constant identifiers
_COUNT_PER_DAY = f"""
SELECT setl_date AS date, count(*)::int AS count FROM {_REPORTED} GROUP BY setl_date
"""  # noqa: S608 - constant identifiers
_FLAG_COLUMNS = (
    "flag_id, rule, setl_id, psn_no, fixmedins_code, details, created_at,"
    " handled, handled_note, handled_by, handled_by_name, handled_at"
)
FLAG_SORTS = Sorts(
    fields={"flag_id": "flag_id", "created_at": "created_at", "rule": "rule"},
    default="-flag_id",
    tiebreak="flag_id",
    unindexed=frozenset({"rule"}),
)
FLAG_SORT_DAYS = 31
FLAG_SORT_NEEDS = f"fixmedins_code, or from and to at most {FLAG_SORT_DAYS} days apart"
REVIEW_SORTS = Sorts(
    fields={"setl_time": "s.setl_time", "medfee_sumamt": "s.medfee_sumamt"},
    default="setl_time",
    tiebreak="s.setl_id",
)
_HANDLE = f"""
UPDATE supervision_flags
SET handled = true, handled_note = $2, handled_by = $3, handled_by_name = $4, handled_at = now()
WHERE flag_id = $1 AND NOT handled RETURNING {_FLAG_COLUMNS}
"""  # noqa: S608 - constant identifiers
REVIEW_STATUSES = ("pending", "approved", "rejected", "withdrawn")
_details = msgspec.json.Decoder(dict)
_lines = msgspec.json.Decoder(list[ReviewLine])


class FlagFilter(msgspec.Struct, frozen=True, kw_only=True):
    rule: str | None = None
    fixmedins_code: str | None = None
    handled: bool | None = None
    start: dt.date | None = None
    end: dt.date | None = None


def flags_narrowed(filters: FlagFilter) -> bool:
    """Whether the filters leave few enough flags to sort them all (``FLAG_SORT_NEEDS``)."""
    if filters.fixmedins_code is not None:
        return True
    if filters.start is None or filters.end is None:
        return False
    return (filters.end - filters.start).days < FLAG_SORT_DAYS


def _day_start(day: dt.date | None, *, after: bool = False) -> dt.datetime | None:
    return None if day is None else day_start(day, after=after)


def _flag(row: asyncpg.Record) -> FlagInfo:
    return FlagInfo(**{**dict(row), "details": _details.decode(row["details"])})


def mask_name(name: str) -> str:
    """``张*``, ``欧**``: the first character only."""
    return name[:1] + "*" * (len(name) - 1)


class Supervision:
    def __init__(self, pool: Pool, audit: AuditLog) -> None:
        self._pool, self._audit = pool, audit

    async def flags(self, filters: FlagFilter, page: PageQuery) -> Page[FlagInfo]:
        where = (
            Where()
            .when(filters.rule, "rule = {}")
            .when(filters.fixmedins_code, "fixmedins_code = {}")
            .when(filters.handled, "handled = {}")
            .when(_day_start(filters.start), "created_at >= {}")
            .when(_day_start(filters.end, after=True), "created_at < {}")
        )
        rows, total = await fetch_page(
            self._pool, columns=_FLAG_COLUMNS, source="supervision_flags", where=where, page=page
        )
        return page.answer([_flag(r) for r in rows], total)

    async def handle_flag(self, caller: Caller, flag_id: int, note: str) -> FlagInfo:
        """Mark a flag handled, with the reviewer's note; handling it again is a conflict
        (the first note stays what was decided)."""
        async with transaction(self._pool) as conn:
            row = await conn.fetchrow(
                _HANDLE,
                flag_id,
                note,
                caller.operator_id or caller.actor,
                caller.operator_name,
            )
            if row is None:
                handled = await conn.fetchval(
                    "SELECT handled FROM supervision_flags WHERE flag_id = $1", flag_id
                )
                if handled is None:
                    raise NotFound("no such flag", code="FLAG_NOT_FOUND")
                raise Conflict("the flag is handled already", code="FLAG_HANDLED")
            await self._audit.record(
                conn,
                caller,
                action="flag.handled",
                object_type="settlement",
                object_id=row["setl_id"],
                data={"flag_id": flag_id, "rule": row["rule"], "note": note},
            )
        return _flag(row)

    async def reviews(self, status: str, page: PageQuery) -> Page[Review]:
        # The constant condition lets a generic plan use settlements_reviewed.
        where = Where().add("review_status <> 'none'").add("review_status = {}", status)
        if status == "pending":
            where.add("status = 'settled'")
        rows, total = await fetch_page(
            self._pool,
            columns="s.*, d.note",
            source="settlements s LEFT JOIN review_decisions d USING (setl_id)",
            where=where,
            page=page,
        )
        items = [
            Review(
                setl_id=r["setl_id"],
                review_status=r["review_status"],
                note=r["note"],
                settlement=stored_setl_info(r),
            )
            for r in rows
        ]
        return page.answer(items, total)

    async def review(self, setl_id: str) -> ReviewDetail:
        """A held settlement as the reviewer decides on it: its lines, the person masked,
        its facility and flags, the policy split."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT s.*, d.note FROM settlements s LEFT JOIN review_decisions d"
                " USING (setl_id) WHERE s.setl_id = $1 AND s.review_status <> 'none'",
                setl_id,
            )
            if row is None:
                raise NotFound("no such settlement under review", code="REVIEW_NOT_FOUND")
            person = await conn.fetchrow(
                "SELECT psn_name, certno_masked AS certno, gend, birth_year, psn_type"
                " FROM persons WHERE psn_no = $1",
                row["psn_no"],
            )
            facility = await conn.fetchrow(
                "SELECT fixmedins_code, fixmedins_name, type, level, credit_rating, status"
                " FROM facilities WHERE fixmedins_code = $1",
                row["fixmedins_code"],
            )
            flags = await conn.fetch(
                f"SELECT {_FLAG_COLUMNS} FROM supervision_flags"  # noqa: S608 - constants
                " WHERE setl_id = $1 ORDER BY flag_id",
                setl_id,
            )
            lines = _lines.decode(row["lines"])
            names = dict(
                await conn.fetch(
                    "SELECT code, name FROM catalog_items WHERE code = ANY($1::text[])",
                    sorted({line.code for line in lines}),
                )
            )
        return ReviewDetail(
            setl_id=setl_id,
            review_status=row["review_status"],
            note=row["note"],
            settlement=stored_setl_info(row),
            lines=[msgspec.structs.replace(line, name=names.get(line.code)) for line in lines],
            person=MaskedPerson(**{**dict(person), "psn_name": mask_name(person["psn_name"])}),
            facility=ReviewFacility(**dict(facility)),
            flags=[_flag(f) for f in flags],
        )

    async def decide(
        self, caller: Caller, setl_id: str, decision: Literal["approved", "rejected"], note: str
    ) -> Review:
        """Approve (the settlement joins the next clearing) or reject (it is reversed).
        Deciding the same way again returns the decision; the other way is a conflict."""
        psn_no = await self._pool.fetchval(
            "SELECT psn_no FROM settlements WHERE setl_id = $1", setl_id
        )
        if psn_no is None:
            raise NotFound("no such settlement", code="SETTLEMENT_NOT_FOUND")
        async with transaction(self._pool) as conn:
            # The person's lock first, as every writer of a person's settlements takes it.
            await conn.execute("SELECT 1 FROM psn_accounts WHERE psn_no = $1 FOR UPDATE", psn_no)
            row = await conn.fetchrow(
                "SELECT review_status FROM settlements WHERE setl_id = $1 FOR UPDATE",
                setl_id,
            )
            current = row["review_status"]
            if current != "pending":
                if current != decision:
                    raise Conflict(
                        f"settlement review is {current}",
                        code="REVIEW_STATE",
                        details={"review_status": current},
                    )
            else:
                await self._record(caller, conn, setl_id, decision, note)
                if decision == "rejected":
                    await reverse_locked(
                        conn, self._audit, caller, setl_id, psn_no, f"review rejected: {note}"
                    )
            stored = await conn.fetchrow("SELECT * FROM settlements WHERE setl_id = $1", setl_id)
            noted = await conn.fetchval(
                "SELECT note FROM review_decisions WHERE setl_id = $1", setl_id
            )
        return Review(
            setl_id=setl_id,
            review_status=stored["review_status"],
            note=noted,
            settlement=stored_setl_info(stored),
        )

    async def _record(
        self, caller: Caller, conn: Connection, setl_id: str, decision: str, note: str
    ) -> None:
        await conn.execute(
            "UPDATE settlements SET review_status = $2 WHERE setl_id = $1", setl_id, decision
        )
        await conn.execute(
            "INSERT INTO review_decisions (setl_id, decision, note) VALUES ($1, $2, $3)",
            setl_id,
            decision,
            note,
        )
        await self._audit.record(
            conn,
            caller,
            action=f"review.{decision}",
            object_type="settlement",
            object_id=setl_id,
            data={"note": note},
        )

    async def fund_report(self, start: dt.date, end: dt.date) -> FundReport:
        if not 0 <= (end - start).days < MAX_REPORT_DAYS:
            raise InvalidRequest(
                f"from..to must run forwards, at most {MAX_REPORT_DAYS} days", code="INVALID_DATES"
            )
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            income = await conn.fetchrow(
                """
                SELECT count(*) AS n, coalesce(sum(amount), 0) AS amount
                FROM account_credits
                WHERE (created_at AT TIME ZONE 'Asia/Shanghai')::date BETWEEN $1 AND $2
                """,
                start,
                end,
            )
            limit = settlement_limit()
            totals = await conn.fetchrow(_TOTALS, start, end, limit)
            lines = await conn.fetch(_EXPENDITURE, start, end, limit)
            amounts = {
                r["date"]: int(r["amount"]) for r in await conn.fetch(_PER_DAY, start, end, limit)
            }
            per_day = [
                DayFigures(date=r["date"], count=r["count"], amount=amounts.get(r["date"], 0))
                for r in await conn.fetch(_COUNT_PER_DAY, start, end, limit)
            ]
            rules = await conn.fetch(
                "SELECT rule, count(*)::int AS count FROM supervision_flags"
                " WHERE created_at >= $1 AND created_at < $2 GROUP BY rule ORDER BY rule",
                _day_start(start),
                _day_start(end, after=True),
            )
        expenditure = [FundLine(**{**dict(r), "amount": int(r["amount"])}) for r in lines]
        return FundReport(
            period_from=start,
            period_to=end,
            account_credits=income["n"],
            account_credit_amount=int(income["amount"]),
            settlements=totals["settlements"],
            reversals=totals["reversals"],
            medfee_sumamt=int(totals["medfee"]),
            expenditure=expenditure,
            expenditure_total=sum(line.amount for line in expenditure),
            out_of_limits=totals["out_of_limits"],
            out_of_limits_setl_ids=totals["out_of_limits_setl_ids"] or [],
            by_fund_and_facility_type=[
                FundFacilityType(
                    fund=line.fund,
                    facility_type=line.fixmedins_type,
                    amount=line.amount,
                    count=line.settlements,
                )
                for line in expenditure
            ],
            per_day=sorted(per_day, key=lambda d: d.date),
            flags_per_rule=[RuleCount(**dict(r)) for r in rules],
        )

    async def per_type(self, start: dt.date, end: dt.date) -> dict[str, TypeCount]:
        """Per facility type, the settlements in the fund report's figures of the period and
        the facilities they were at (the public report withholds a type with too few)."""
        rows = await self._pool.fetch(
            "SELECT fixmedins_type, count(*)::int AS settlements,"  # noqa: S608 - constants
            f" count(DISTINCT fixmedins_code)::int AS facilities FROM {_REPORTED}"
            " GROUP BY fixmedins_type",
            start,
            end,
            settlement_limit(),
        )
        return {
            r["fixmedins_type"]: TypeCount(settlements=r["settlements"], facilities=r["facilities"])
            for r in rows
        }


def report_csv(report: FundReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("section", "fund", "fixmedins_type", "count", "amount"))
    writer.writerow(
        ("income", "account_credits", "", report.account_credits, report.account_credit_amount)
    )
    for line in report.expenditure:
        writer.writerow(
            ("expenditure", line.fund, line.fixmedins_type, line.settlements, line.amount)
        )
    writer.writerow(("expenditure", "TOTAL", "", report.settlements, report.expenditure_total))
    writer.writerow(("reversals", "", "", report.reversals, ""))
    if report.out_of_limits:
        writer.writerow(("out_of_limits", "", "", report.out_of_limits, ""))
    return out.getvalue()
