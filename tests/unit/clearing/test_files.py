from __future__ import annotations

import datetime as dt

from cardsvc.clearing.files import combine, facility_csv, unfit_facilities

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


def test_csv_has_a_header_one_row_per_fund_and_a_total():
    [h1] = combine([("H1", "310100", 1000, 3), ("H1", "acct", 200, 2)], [], {"H1": (3, 0)})
    assert facility_csv(DAY, h1).splitlines() == [
        "clearing_date,fixmedins_code,fund,settlements,settled_amt,reversals,reversed_amt,net_amt",
        "2026-11-24,H1,310100,3,1000,0,0,1000",
        "2026-11-24,H1,acct,2,200,0,0,200",
        "2026-11-24,H1,TOTAL,3,1200,0,0,1200",
    ]


def test_a_facility_whose_figures_do_not_fit_a_bigint_is_unfit_alone():
    big = 5 * 10**17
    settled = [("H1", "310100", 1000, 1), ("H2", "410100", 19 * big, 19)]
    reversed_ = [("H3", "410100", 2 * 5 * 10**18, 2), ("H4", "410100", 5 * 10**18, 1)]
    assert unfit_facilities(settled, reversed_) == {"H2", "H3"}
    assert unfit_facilities([("H1", "310100", 2**63 - 1, 1)], []) == set()
