"""3201's description: cardsvc's figures in yuan and what differs, table-driven."""

from __future__ import annotations

import datetime as dt

import pytest

from cardsvc.national.recon import statement_description
from cardsvc.reconciliation.models import StatementResult, Totals

DAY = dt.date(2026, 11, 30)
OURS = Totals(fixmedins_setl_cnt=3, medfee_sumamt=22500, fund_pay_sumamt=0, acct_pay=1000)


def result(facility: Totals, out_of_limits: list[str] | None = None) -> StatementResult:
    match = facility == OURS and not out_of_limits
    return StatementResult(
        stmt_rslt="0" if match else "1",
        stmt_rslt_dscr="",
        insutype="310",
        stmt_begndate=DAY,
        stmt_enddate=DAY,
        service=OURS,
        facility=facility,
        out_of_limits=out_of_limits or [],
    )


FIGURES = "cardsvc: 3 settlements, medfee_sumamt 225.00, fund_pay_sumamt 0.00, acct_pay 10.00"


@pytest.mark.parametrize(
    ("facility", "out_of_limits", "expected"),
    [
        (OURS, None, FIGURES + "; balanced"),
        (
            Totals(fixmedins_setl_cnt=4, medfee_sumamt=22501, fund_pay_sumamt=0, acct_pay=1000),
            None,
            FIGURES + "; differs: fixmedins_setl_cnt, medfee_sumamt",
        ),
        (
            OURS,
            ["S1", "S2"],
            FIGURES + "; settlements above the amount limits are in no total: S1, S2",
        ),
        (
            OURS,
            [f"S{i}" for i in range(7)],
            FIGURES
            + "; settlements above the amount limits are in no total: S0, S1, S2, S3, S4, …",
        ),
    ],
)
def test_statement_description(
    facility: Totals, out_of_limits: list[str] | None, expected: str
) -> None:
    assert statement_description(result(facility, out_of_limits)) == expected
