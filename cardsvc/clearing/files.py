"""Clearing figures, pure: amounts per facility and fund, and the per-facility CSV file."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping

from cardsvc.clearing.models import ClearingHold, ClearingItem, FacilityClearing
from cardsvc.clock import BUSINESS_TZ
from cardsvc.money import yuan, yuan_figure
from cardsvc.settlement.fundparts import fits_bigint

# The facility's file: one line per fund a cleared settlement drew on, one per fund of a
# netted reversal (negative net), then a total line per fund and the facility's TOTAL.
CSV_HEADER = (
    "record",
    "clearing_date",
    "fixmedins_code",
    "setl_id",
    "time",
    "fund",
    "settlements",
    "reversals",
    "settled_yuan",
    "reversed_yuan",
    "net_yuan",
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


class FileMismatch(Exception):
    """The rows read for a file do not add up to the run's stored figures."""


class FacilityFile:
    """One facility's clearing file, built line by line (so a file of 100,000 settlements
    is never held whole): ``header``, the detail lines in the order read, then ``totals``,
    which are the exact sums of the detail lines and must equal the run's stored figures.
    CSV per RFC 4180 (CRLF), ASCII only: every field is a date, code, id, time or figure."""

    def __init__(self, day: dt.date, facility: FacilityClearing) -> None:
        self._day, self._facility = day.isoformat(), facility
        self._sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        # Distinct counts: a settlement's fund lines are adjacent (read by time, then id).
        self._last: dict[str, str | None] = {"settlement": None, "reversal": None}
        self._distinct = {"settlement": 0, "reversal": 0}
        self._out = io.StringIO()
        self._csv = csv.writer(self._out, lineterminator="\r\n")

    def header(self) -> str:
        return self._line(CSV_HEADER)

    def settlement(self, setl_id: str, at: dt.datetime, fund: str | None, fen: int) -> str:
        """What a cleared settlement's ``fund`` pays; ``fund`` None: it was all cash (listed,
        with no fund and nothing owed)."""
        self._count("settlement", setl_id)
        if fund is not None:
            self._sums[fund][0] += 1
            self._sums[fund][1] += fen
        return self._detail("settlement", setl_id, at, fund, (1, 0, fen, 0))

    def reversal(self, setl_id: str, at: dt.datetime, fund: str | None, fen: int) -> str:
        """A reversal netted by the run: what it takes back of the settlement's ``fund``."""
        self._count("reversal", setl_id)
        if fund is not None:
            self._sums[fund][2] += 1
            self._sums[fund][3] += fen
        return self._detail("reversal", setl_id, at, fund, (0, 1, 0, fen))

    def totals(self) -> str:
        """A ``total`` line per fund and the facility's ``TOTAL`` (distinct counts: a
        settlement drawing on two funds counts once). ``FileMismatch`` unless they are the
        run's figures to the fen."""
        items = [
            (i.fund, i.settlements, i.settled_amt, i.reversals, i.reversed_amt)
            for i in self._facility.items
        ]
        read = [(fund, n_s, s, n_r, r) for fund, (n_s, s, n_r, r) in sorted(self._sums.items())]
        counts = (self._distinct["settlement"], self._distinct["reversal"])
        if read != items or counts != (self._facility.settlements, self._facility.reversals):
            raise FileMismatch(f"{self._facility.fixmedins_code} {self._day}")
        lines = [self._total(fund, n_s, n_r, s, r) for fund, n_s, s, n_r, r in read]
        settled = sum(i.settled_amt for i in self._facility.items)
        reversed_ = sum(i.reversed_amt for i in self._facility.items)
        lines.append(self._total("TOTAL", *counts, settled, reversed_))
        return "".join(lines)

    def _count(self, kind: str, setl_id: str) -> None:
        if self._last[kind] != setl_id:
            self._last[kind] = setl_id
            self._distinct[kind] += 1

    def _detail(
        self,
        kind: str,
        setl_id: str,
        at: dt.datetime,
        fund: str | None,
        figures: tuple[int, int, int, int],
    ) -> str:
        when = at.astimezone(BUSINESS_TZ).isoformat(timespec="seconds")
        return self._row(kind, setl_id, when, fund or "", *figures)

    def _total(self, fund: str, n_s: int, n_r: int, settled: int, reversed_: int) -> str:
        return self._row("total", "", "", fund, n_s, n_r, settled, reversed_)

    def _row(self, kind: str, setl_id: str, when: str, fund: str, *figures: int) -> str:
        n_s, n_r, settled, reversed_ = figures
        return self._line(
            (
                kind,
                self._day,
                self._facility.fixmedins_code,
                setl_id,
                when,
                fund,
                n_s,
                n_r,
                yuan_figure(settled),
                yuan_figure(reversed_),
                yuan_figure(settled - reversed_),
            )
        )

    def _line(self, fields: Iterable[object]) -> str:
        self._csv.writerow(fields)
        line = self._out.getvalue()
        self._out.seek(0)
        self._out.truncate()
        return line
