"""Reconciliation (对账) of a facility's own figures against the service's.

The service's figures count the facility's settlements of the insutype whose business date
is in the period and that are not reversed (a settlement reversed since is not counted).
"""

from __future__ import annotations

from cardsvc.db import Pool
from cardsvc.errors import InvalidRequest
from cardsvc.reconciliation.models import (
    DetailRequest,
    DetailResult,
    StatementRequest,
    StatementResult,
    Totals,
)
from cardsvc.settlement.fundparts import first_setl_ids, settlement_limit, within_limits

MAX_PERIOD_DAYS = 31

# $5: the settlement limit. The facility's settlements above it (stored before the limits
# existed) are in no total: they are named instead. Sums are numeric, exact in Python.
_PERIOD = """settlements WHERE fixmedins_code = $1 AND insutype = $2
    AND setl_date BETWEEN $3 AND $4 AND status = 'settled'"""
_STATEMENT = f"""
SELECT count(*) AS n, coalesce(sum(medfee_sumamt), 0) AS medfee,
       coalesce(sum(fund_pay_sumamt), 0) AS fund, coalesce(sum(acct_pay), 0) AS acct,
       (SELECT {first_setl_ids()}
        FROM {_PERIOD} AND NOT {within_limits("settlements", "$5")}) AS out_of_limits
FROM {_PERIOD} AND {within_limits("settlements", "$5")}
"""  # noqa: S608 - constant identifiers


def _mismatch(out_of_limits: list[str]) -> str:
    if out_of_limits:
        return (
            "mismatch: settlements above the amount limits are in no total (out_of_limits);"
            " reconcile the detail"
        )
    return "mismatch: reconcile the detail"


class Reconciliation:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def statement(
        self, fixmedins_code: str, req: StatementRequest, *, max_days: int = MAX_PERIOD_DAYS
    ) -> StatementResult:
        """``max_days``: the longest period allowed (the national gateway's 3201 allows a
        year: its facilities reconcile by month or year as their region does)."""
        days = (req.stmt_enddate - req.stmt_begndate).days
        if not 0 <= days < max_days:
            raise InvalidRequest(
                f"the period must run forwards and span at most {max_days} days",
                code="INVALID_DATES",
            )
        row = await self._pool.fetchrow(
            _STATEMENT,
            fixmedins_code,
            req.insutype,
            req.stmt_begndate,
            req.stmt_enddate,
            settlement_limit(),
        )
        service = Totals(
            fixmedins_setl_cnt=row["n"],
            medfee_sumamt=int(row["medfee"]),
            fund_pay_sumamt=int(row["fund"]),
            acct_pay=int(row["acct"]),
        )
        facility = Totals(
            fixmedins_setl_cnt=req.fixmedins_setl_cnt,
            medfee_sumamt=req.medfee_sumamt,
            fund_pay_sumamt=req.fund_pay_sumamt,
            acct_pay=req.acct_pay,
        )
        out_of_limits = row["out_of_limits"] or []
        # Settlements the service cannot count are never reconciled until they are reversed.
        match = service == facility and not out_of_limits
        return StatementResult(
            stmt_rslt="0" if match else "1",
            stmt_rslt_dscr="match" if match else _mismatch(out_of_limits),
            out_of_limits=out_of_limits,
            insutype=req.insutype,
            stmt_begndate=req.stmt_begndate,
            stmt_enddate=req.stmt_enddate,
            service=service,
            facility=facility,
        )

    async def detail(self, fixmedins_code: str, req: DetailRequest) -> DetailResult:
        rows = await self._pool.fetch(
            """
            SELECT setl_id, status FROM settlements
            WHERE fixmedins_code = $1 AND setl_date = $2 AND ($3::text IS NULL OR insutype = $3)
            """,
            fixmedins_code,
            req.stmt_date,
            req.insutype,
        )
        status = {r["setl_id"]: r["status"] for r in rows}
        listed = set(req.setl_ids)
        settled = {s for s, st in status.items() if st == "settled"}
        missing_on_service = sorted(listed - status.keys())
        missing_on_facility = sorted(settled - listed)
        reversed_listed = sorted(s for s in listed if status.get(s) == "reversed")
        clean = not (missing_on_service or missing_on_facility or reversed_listed)
        return DetailResult(
            stmt_rslt="0" if clean else "1",
            matched=len(listed & settled),
            missing_on_service=missing_on_service,
            missing_on_facility=missing_on_facility,
            reversed_on_service=reversed_listed,
        )
