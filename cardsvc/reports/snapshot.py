"""The public fund report's figures from the internal fund report, pure: aggregates per
fund, facility type and day, never a settlement id, a person or a facility.

Aggregates can still single one out: a day with one settlement is that person's bill, a
facility type with one facility is that facility's takings. So a figure is withheld
(``None``) when it counts fewer than ``MIN_COUNT`` settlements (or credits), or belongs to a
facility type with fewer than ``MIN_FACILITIES`` facilities in the period; then, so that no
withheld figure is the difference of published ones, every list (and each fund's and each
type's row of the fund x type table) that withholds one figure withholds a second (its
smallest), and a withheld fund or type withholds its fund x type rows.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Final

from cardsvc.reports.models import (
    DayTotal,
    FacilityTypeTotal,
    Figures,
    FundAndType,
    FundTotal,
    Income,
    PublicReport,
)
from cardsvc.supervision.models import FundReport, TypeCount

MIN_COUNT: Final = 5
MIN_FACILITIES: Final = 3

Cell = FundTotal | FacilityTypeTotal | FundAndType | DayTotal


def snapshot(report: FundReport, per_type: Mapping[str, TypeCount]) -> Figures:
    """``per_type``: each facility type's settlements and facilities in the period."""
    facilities = {kind: count.facilities for kind, count in per_type.items()}
    return withhold(_figures(report, per_type), facilities)


def _figures(report: FundReport, per_type_counts: Mapping[str, TypeCount]) -> Figures:
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
        # A settlement paid by two funds is in two fund lines: a type counts it once.
        per_facility_type=[
            FacilityTypeTotal(
                facility_type=k,
                count=per_type_counts[k].settlements if k in per_type_counts else n,
                amount=a,
            )
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


def _hide(cell: Cell) -> bool:
    changed = cell.count is not None
    cell.count = cell.amount = None
    return changed


def _complete(group: Sequence[Cell]) -> bool:
    """Withhold a second figure of ``group`` (its smallest) when exactly one is withheld."""
    shown = [c for c in group if c.count is not None]
    if len(group) - len(shown) != 1 or not shown:
        return False
    return _hide(min(shown, key=lambda c: (c.count or 0, c.amount or 0)))


def withhold(figures: Figures, facilities_per_type: Mapping[str, int]) -> Figures:
    """Withhold the figures that would single out a person or a facility (module doc)."""
    f = figures
    if f.income.account_credits is not None and f.income.account_credits < MIN_COUNT:
        f.income.account_credits = f.income.amount = None
    if f.settlements is not None and f.settlements < MIN_COUNT:
        f.settlements = f.medfee_sumamt = f.expenditure_total = None
    cells: list[Cell] = [*f.per_fund, *f.per_facility_type, *f.per_fund_and_facility_type]
    cells += f.per_day
    for cell in cells:
        few = cell.count is not None and cell.count < MIN_COUNT
        kind = getattr(cell, "facility_type", None)
        if few or (kind is not None and facilities_per_type.get(kind, 0) < MIN_FACILITIES):
            _hide(cell)
    changed = True
    while changed:  # each round withholds more, so it ends
        changed = False
        for fund in f.per_fund:
            rows = [r for r in f.per_fund_and_facility_type if r.fund == fund.fund]
            if fund.count is None:
                changed |= any([_hide(r) for r in rows])
            changed |= _complete(rows)
        for kind in f.per_facility_type:
            rows = [
                r for r in f.per_fund_and_facility_type if r.facility_type == kind.facility_type
            ]
            if kind.count is None:
                changed |= any([_hide(r) for r in rows])
            changed |= _complete(rows)
        for group in (f.per_fund, f.per_facility_type, f.per_day):
            changed |= _complete(group)
    return f


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
