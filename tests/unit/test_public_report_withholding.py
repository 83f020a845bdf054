"""The public fund report withholds every figure that would single out a person or a
facility, and no withheld figure can be got back as a difference of published ones."""

from __future__ import annotations

import csv
import datetime as dt
import io

from cardsvc.reports.models import PublicReport
from cardsvc.reports.snapshot import MIN_COUNT, MIN_FACILITIES, report_csv, snapshot
from cardsvc.supervision.models import DayFigures, FundLine, FundReport, TypeCount

DAY = dt.date(2026, 11, 2)
MANY = {"hospital": MIN_FACILITIES + 2, "pharmacy": MIN_FACILITIES + 2}


def _types(lines: list[FundLine], facilities: dict[str, int]) -> dict[str, TypeCount]:
    """Each type's facilities, and its settlements as its largest fund line (each
    settlement pays from that fund, some from others too)."""
    return {
        kind: TypeCount(
            settlements=max(x.settlements for x in lines if x.fixmedins_type == kind),
            facilities=n,
        )
        for kind, n in facilities.items()
        if any(x.fixmedins_type == kind for x in lines)
    }


def _report(lines: list[FundLine], per_day: list[DayFigures], credits: int = 40) -> FundReport:
    return FundReport(
        period_from=DAY,
        period_to=DAY + dt.timedelta(days=len(per_day) - 1),
        account_credits=credits,
        account_credit_amount=credits * 10000,
        settlements=sum(d.count for d in per_day),
        reversals=0,
        medfee_sumamt=sum(d.amount for d in per_day),
        expenditure=lines,
        expenditure_total=sum(line.amount for line in lines),
        out_of_limits=0,
        out_of_limits_setl_ids=[],
        per_day=per_day,
    )


def _days(*counts: int) -> list[DayFigures]:
    return [
        DayFigures(date=DAY + dt.timedelta(days=i), count=n, amount=n * 1000 + i)
        for i, n in enumerate(counts)
    ]


def test_a_day_with_one_settlement_does_not_show_that_bill():
    lines = [FundLine(fund="310100", fixmedins_type="hospital", settlements=41, amount=41000)]
    figures = snapshot(_report(lines, _days(20, 1, 20)), _types(lines, MANY))
    lonely = figures.per_day[1]
    assert lonely.count is None and lonely.amount is None
    # Nor as the total less the other days: a second day is withheld with it.
    assert sum(d.count is None for d in figures.per_day) == 2
    assert figures.expenditure_total == 41000 and figures.per_fund[0].amount == 41000


def test_a_facility_type_with_too_few_facilities_is_withheld_everywhere():
    lines = [
        FundLine(fund="310100", fixmedins_type="hospital", settlements=30, amount=300000),
        FundLine(fund="310100", fixmedins_type="pharmacy", settlements=30, amount=90000),
        FundLine(fund="acct", fixmedins_type="hospital", settlements=20, amount=50000),
        FundLine(fund="acct", fixmedins_type="pharmacy", settlements=10, amount=7000),
    ]
    one_pharmacy = {"hospital": 10, "pharmacy": 1}
    figures = snapshot(_report(lines, _days(30, 30)), _types(lines, one_pharmacy))
    types = {t.facility_type: t for t in figures.per_facility_type}
    assert types["pharmacy"].amount is None and types["pharmacy"].count is None
    # ...and hospital too: else the total less hospitals is the one pharmacy's takings.
    assert types["hospital"].amount is None
    assert all(r.amount is None for r in figures.per_fund_and_facility_type)
    assert {f.fund: f.amount for f in figures.per_fund} == {"310100": 390000, "acct": 57000}


def test_a_small_cell_of_the_fund_by_type_table_is_not_a_difference_of_others():
    lines = [
        FundLine(fund="310100", fixmedins_type="hospital", settlements=30, amount=300000),
        FundLine(fund="310100", fixmedins_type="pharmacy", settlements=2, amount=900),
        FundLine(fund="acct", fixmedins_type="hospital", settlements=20, amount=50000),
        FundLine(fund="acct", fixmedins_type="pharmacy", settlements=10, amount=7000),
    ]
    figures = snapshot(_report(lines, _days(31, 31)), _types(lines, MANY))
    shown = {
        (r.fund, r.facility_type): r.amount
        for r in figures.per_fund_and_facility_type
        if r.amount is not None
    }
    # The 2-settlement cell is withheld, and in its fund's row and its type's column a
    # second cell is too (which makes the fourth one's row withhold another: none is left).
    assert ("310100", "pharmacy") not in shown
    for fund in ("310100", "acct"):
        assert sum(k[0] == fund for k in shown) != 1
    for kind in ("hospital", "pharmacy"):
        assert sum(k[1] == kind for k in shown) != 1


def test_a_period_with_few_settlements_or_credits_publishes_no_amount_of_them():
    lines = [FundLine(fund="310100", fixmedins_type="hospital", settlements=1, amount=12345)]
    figures = snapshot(_report(lines, _days(1), credits=2), _types(lines, MANY))
    assert figures.settlements is None and figures.expenditure_total is None
    assert figures.medfee_sumamt is None
    assert figures.income.account_credits is None and figures.income.amount is None
    report = PublicReport(
        report_id="R0123456789",
        title="t",
        period_from=DAY,
        period_to=DAY,
        published_at=dt.datetime(2026, 11, 3, tzinfo=dt.UTC),
        figures=figures,
    )
    text = report_csv(report)
    assert "12345" not in text and "1000" not in text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["amount"] for r in rows if r["section"] == "day"} == {""}


def test_large_cells_are_all_published():
    lines = [
        FundLine(fund="310100", fixmedins_type="hospital", settlements=MIN_COUNT, amount=5000),
        FundLine(fund="310100", fixmedins_type="pharmacy", settlements=MIN_COUNT, amount=700),
    ]
    figures = snapshot(_report(lines, _days(MIN_COUNT, MIN_COUNT)), _types(lines, MANY))
    assert all(r.amount is not None for r in figures.per_fund_and_facility_type)
    assert all(d.amount is not None for d in figures.per_day)
    assert figures.expenditure_total == 5700


def test_a_type_counts_each_settlement_once_not_once_per_fund():
    # Three pharmacy settlements, each paid by the fund and the account: six fund lines,
    # still three settlements, too few to publish.
    lines = [
        FundLine(fund="310100", fixmedins_type="hospital", settlements=40, amount=400000),
        FundLine(fund="310100", fixmedins_type="pharmacy", settlements=3, amount=3000),
        FundLine(fund="acct", fixmedins_type="pharmacy", settlements=3, amount=600),
    ]
    figures = snapshot(_report(lines, _days(43)), _types(lines, MANY))
    pharmacy = next(t for t in figures.per_facility_type if t.facility_type == "pharmacy")
    assert pharmacy.count is None and pharmacy.amount is None
