from __future__ import annotations

import datetime as dt

import pytest

from cardsvc.clearing.files import FacilityFile, FileMismatch, combine, unfit_facilities

DAY = dt.date(2026, 11, 24)


def test_settled_and_reversed_amounts_net_per_facility_and_fund():
    facilities = combine(
        settled=[("H2", "310100", 500, 2), ("H1", "310100", 1000, 3), ("H1", "acct", 200, 1)],
        reversed_=[("H1", "310100", 300, 1), ("H3", "410100", 50, 1)],
        counts={"H1": (3, 1), "H2": (2, 0), "H3": (0, 1), "H4": (1, 0)},
    )
    assert [f.fixmedins_code for f in facilities] == ["H1", "H2", "H3", "H4"]
    h1 = facilities[0]
    assert (h1.settlements, h1.reversals, h1.net_amt) == (3, 1, 1000 - 300 + 200)
    assert [(i.fund, i.settled_amt, i.reversed_amt, i.net_amt) for i in h1.items] == [
        ("310100", 1000, 300, 700),
        ("acct", 200, 0, 200),
    ]
    assert facilities[2].net_amt == -50  # reversals only: the facility pays back
    assert facilities[3].items == [] and facilities[3].net_amt == 0  # cash-only settlements


AT = dt.datetime(2026, 11, 24, 2, 30, tzinfo=dt.UTC)  # 10:30 in Asia/Shanghai
HEADER = (
    "record,clearing_date,fixmedins_code,setl_id,time,fund,settlements,reversals,"
    "settled_yuan,reversed_yuan,net_yuan"
)


def test_the_file_lists_each_settlement_per_fund_in_yuan_then_totals_per_fund():
    [h1] = combine(
        [("H1", "310100", 100000123, 2), ("H1", "acct", 1, 1)],
        [("H1", "310100", 150, 1)],
        {"H1": (3, 1)},
    )
    file = FacilityFile(DAY, h1)
    text = (
        file.header()
        + file.settlement("S1", AT, "310100", 100000000)
        + file.settlement("S1", AT, "acct", 1)
        + file.settlement("S2", AT, "310100", 123)
        + file.settlement("S3", AT, None, 0)  # all cash: listed, owes nothing
        + file.reversal("S0", AT, "310100", 150)
        + file.totals()
    )
    assert text.endswith("\r\n") and "\r\n" * 2 not in text  # RFC 4180 line ends
    assert text.isascii() and not text.startswith("\ufeff")  # nothing a BOM would change
    t = "2026-11-24T10:30:00+08:00"
    assert text.split("\r\n")[:-1] == [
        HEADER,
        f"settlement,2026-11-24,H1,S1,{t},310100,1,0,1000000.00,0.00,1000000.00",
        f"settlement,2026-11-24,H1,S1,{t},acct,1,0,0.01,0.00,0.01",
        f"settlement,2026-11-24,H1,S2,{t},310100,1,0,1.23,0.00,1.23",
        f"settlement,2026-11-24,H1,S3,{t},,1,0,0.00,0.00,0.00",
        f"reversal,2026-11-24,H1,S0,{t},310100,0,1,0.00,1.50,-1.50",
        "total,2026-11-24,H1,,,310100,2,1,1000001.23,1.50,999999.73",
        "total,2026-11-24,H1,,,acct,1,0,0.01,0.00,0.01",
        "total,2026-11-24,H1,,,TOTAL,3,1,1000001.24,1.50,999999.74",
    ]


def test_a_facility_with_only_cash_settlements_has_its_ids_and_a_zero_total():
    [h4] = combine([], [], {"H4": (1, 0)})
    file = FacilityFile(DAY, h4)
    body = file.settlement("S9", AT, None, 0) + file.totals()
    assert body.splitlines()[-1] == "total,2026-11-24,H4,,,TOTAL,1,0,0.00,0.00,0.00"


@pytest.mark.parametrize(
    "rows",
    [
        [("S1", "310100", 999)],  # a fen short of the run's figure
        [("S1", "310100", 1000), ("S2", "310100", 0)],  # one settlement too many
        [("S1", "390100", 1000)],  # another fund
        [],  # nothing read
    ],
)
def test_rows_that_do_not_add_up_to_the_run_get_no_totals(rows):
    [h1] = combine([("H1", "310100", 1000, 1)], [], {"H1": (1, 0)})
    file = FacilityFile(DAY, h1)
    for setl_id, fund, fen in rows:
        file.settlement(setl_id, AT, fund, fen)
    with pytest.raises(FileMismatch):
        file.totals()


def test_a_facility_whose_figures_do_not_fit_a_bigint_is_unfit_alone():
    big = 5 * 10**17
    settled = [("H1", "310100", 1000, 1), ("H2", "410100", 19 * big, 19)]
    reversed_ = [("H3", "410100", 2 * 5 * 10**18, 2), ("H4", "410100", 5 * 10**18, 1)]
    assert unfit_facilities(settled, reversed_) == {"H2", "H3"}
    assert unfit_facilities([("H1", "310100", 2**63 - 1, 1)], []) == set()
