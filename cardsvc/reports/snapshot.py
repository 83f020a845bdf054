"""The public fund report's figures from the internal fund report, pure: aggregates per
fund, facility type and day, never a settlement id, a person or a facility."""

from __future__ import annotations

import csv
import io
from collections import defaultdict

from cardsvc.reports.models import (
    DayTotal,
    FacilityTypeTotal,
    Figures,
    FundAndType,
    FundTotal,
    Income,
    PublicReport,
)
from cardsvc.supervision.models import FundReport


def snapshot(report: FundReport) -> Figures:
    per_fund: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for line in report.expenditure:
        for key, totals in ((line.fund, per_fund), (line.fixmedins_type, per_type)):
            totals[key][0] += line.settlements
            totals[key][1] += line.amount
    return Figures(
        income=Income(account_credits=report.account_credits, amount=report.account_credit_amount),
        settlements=report.settlements,
        reversals=report.reversals,
        medfee_sumamt=report.medfee_sumamt,
        expenditure_total=report.expenditure_total,
        per_fund=[FundTotal(fund=k, count=n, amount=a) for k, (n, a) in sorted(per_fund.items())],
        per_facility_type=[
            FacilityTypeTotal(facility_type=k, count=n, amount=a)
            for k, (n, a) in sorted(per_type.items())
        ],
        per_fund_and_facility_type=[
            FundAndType(
                fund=line.fund,
                facility_type=line.fixmedins_type,
                count=line.settlements,
                amount=line.amount,
            )
            for line in report.expenditure
        ],
        per_day=[DayTotal(date=d.date, count=d.count, amount=d.amount) for d in report.per_day],
    )


def report_csv(report: PublicReport) -> str:
    """One row per figure: section, fund, facility_type, date, count, amount (fen)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    f = report.figures
    writer.writerow(("section", "fund", "facility_type", "date", "count", "amount"))
    writer.writerow(("income", "", "", "", f.income.account_credits, f.income.amount))
    for fund in f.per_fund:
        writer.writerow(("fund", fund.fund, "", "", fund.count, fund.amount))
    for kind in f.per_facility_type:
        writer.writerow(("facility_type", "", kind.facility_type, "", kind.count, kind.amount))
    for both in f.per_fund_and_facility_type:
        writer.writerow(
            ("fund_and_facility_type", both.fund, both.facility_type, "", both.count, both.amount)
        )
    for day in f.per_day:
        writer.writerow(("day", "", "", day.date.isoformat(), day.count, day.amount))
    writer.writerow(("expenditure_total", "", "", "", f.settlements, f.expenditure_total))
    writer.writerow(("reversals", "", "", "", f.reversals, ""))
    return out.getvalue()
