"""Fund supervision (基金监管): real-time flags, the review queue of settlements held at
C-rated facilities, and the fund report."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Literal

import msgspec

from cardsvc.audit.services import AuditLog
from cardsvc.db import Connection, Pool, transaction
from cardsvc.errors import Conflict, InvalidRequest, NotFound
from cardsvc.settlement.fundparts import (
    first_setl_ids,
    fund_parts,
    settlement_limit,
    within_limits,
)
from cardsvc.settlement.plan import stored_setl_info
from cardsvc.settlement.services import reverse_locked
from cardsvc.supervision.models import FlagInfo, FundLine, FundReport, Review
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
_details = msgspec.json.Decoder(dict)


class Supervision:
    def __init__(self, pool: Pool, audit: AuditLog) -> None:
        self._pool, self._audit = pool, audit

    async def flags(self, since: dt.datetime, rule: str | None, limit: int) -> list[FlagInfo]:
        rows = await self._pool.fetch(
            """
            SELECT flag_id, rule, setl_id, psn_no, fixmedins_code, details, created_at
            FROM supervision_flags WHERE created_at >= $1 AND ($2::text IS NULL OR rule = $2)
            ORDER BY flag_id LIMIT $3
            """,
            since,
            rule,
            limit,
        )
        return [FlagInfo(**{**dict(r), "details": _details.decode(r["details"])}) for r in rows]

    async def pending_reviews(self, limit: int) -> list[Review]:
        rows = await self._pool.fetch(
            "SELECT * FROM settlements WHERE review_status = 'pending' AND status = 'settled'"
            " ORDER BY setl_time LIMIT $1",
            limit,
        )
        return [
            Review(
                setl_id=r["setl_id"],
                review_status="pending",
                note=None,
                settlement=stored_setl_info(r),
            )
            for r in rows
        ]

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
        await self._audit.append(
            conn,
            actor=caller.actor,
            action=f"review.{decision}",
            object_type="settlement",
            object_id=setl_id,
            data=caller.audited({"note": note}),
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
        )


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
