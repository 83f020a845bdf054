"""Clearing figures, pure: amounts per facility and fund, and the per-facility CSV file."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping

from cardsvc.clearing.models import ClearingHold, ClearingItem, FacilityClearing
from cardsvc.money import yuan
from cardsvc.settlement.fundparts import fits_bigint

CSV_HEADER = (
    "clearing_date",
    "fixmedins_code",
    "fund",
    "settlements",
    "settled_amt",
    "reversals",
    "reversed_amt",
    "net_amt",
)


def combine(
    settled: Iterable[tuple[str, str, int, int]],
    reversed_: Iterable[tuple[str, str, int, int]],
    counts: Mapping[str, tuple[int, int]],
) -> list[FacilityClearing]:
    """Rows of (facility, fund, amount, count) for settlements and for reversals, merged
    into each facility's items (net = settled - reversed), with each facility's distinct
    (settlements, reversals) counts. Sorted, so files are stable."""
    figures: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for code, fund, amount, count in settled:
        figures[(code, fund)][0] += count
        figures[(code, fund)][1] += amount
    for code, fund, amount, count in reversed_:
        figures[(code, fund)][2] += count
        figures[(code, fund)][3] += amount
    by_facility: dict[str, list[ClearingItem]] = {code: [] for code in counts}
    for (code, fund), (n_s, amt_s, n_r, amt_r) in sorted(figures.items()):
        by_facility.setdefault(code, []).append(
            ClearingItem(
                fixmedins_code=code,
                fund=fund,
                settlements=n_s,
                settled_amt=amt_s,
                reversals=n_r,
                reversed_amt=amt_r,
                net_amt=amt_s - amt_r,
            )
        )
    return [
        FacilityClearing(
            fixmedins_code=code,
            settlements=counts.get(code, (0, 0))[0],
            reversals=counts.get(code, (0, 0))[1],
            net_amt=sum(i.net_amt for i in items),
            items=items,
        )
        for code, items in sorted(by_facility.items())
    ]


def unfit_facilities(
    settled: Iterable[tuple[str, str, int, int]], reversed_: Iterable[tuple[str, str, int, int]]
) -> set[str]:
    """Facilities with a figure (per fund or net) that no bigint column or ledger amount
    can hold: cleared anyway, they would stop the whole run."""
    return {
        f.fixmedins_code
        for f in combine(settled, reversed_, {})
        if not all(
            fits_bigint(v)
            for i in f.items
            for v in (i.settled_amt, i.reversed_amt, i.net_amt, f.net_amt)
        )
    }


def over_limits_hold(
    fixmedins_code: str, count: int, setl_ids: list[str], limit: int
) -> ClearingHold:
    """``count`` settlements above the settlement ``limit`` (fen), not cleared."""
    return ClearingHold(
        fixmedins_code=fixmedins_code,
        code="AMOUNT_LIMIT_EXCEEDED",
        message=(
            f"{count} settlement(s) claim more than the policy allows ({yuan(limit)} a"
            " settlement): not cleared; each waits until the facility or an administrator"
            " reverses it"
        ),
        settlements=count,
        setl_ids=setl_ids,
    )


def out_of_range_hold(fixmedins_code: str) -> ClearingHold:
    return ClearingHold(
        fixmedins_code=fixmedins_code,
        code="AMOUNT_OUT_OF_RANGE",
        message="the facility's figures are too large to clear: none of its settlements or"
        " reversals were cleared by this run",
        settlements=0,
        setl_ids=[],
    )


def facility_csv(day: dt.date, facility: FacilityClearing) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for item in facility.items:
        writer.writerow(
            (
                day.isoformat(),
                item.fixmedins_code,
                item.fund,
                item.settlements,
                item.settled_amt,
                item.reversals,
                item.reversed_amt,
                item.net_amt,
            )
        )
    total = facility.items
    writer.writerow(
        (
            day.isoformat(),
            facility.fixmedins_code,
            "TOTAL",
            facility.settlements,
            sum(i.settled_amt for i in total),
            facility.reversals,
            sum(i.reversed_amt for i in total),
            facility.net_amt,
        )
    )
    return out.getvalue()
