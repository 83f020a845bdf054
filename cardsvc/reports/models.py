"""Wire structs of the public fund report: a frozen snapshot of aggregates only.

Nothing here names a person or a facility: figures are per fund, per facility TYPE and
per business day. ``snapshot`` (cardsvc/reports/snapshot.py) is the one place that turns
the internal fund report into these. A figure too small to publish (it would single out a
person or a facility) is ``None``: withheld, in JSON ``null``, in the CSV an empty cell."""

from __future__ import annotations

import datetime as dt

import msgspec

from cardsvc.types import Text

REPORT_ID_PATTERN = r"^R[0-9A-F]{10}$"


class PublishReport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    period_from: dt.date
    period_to: dt.date
    title: Text


class Income(msgspec.Struct, kw_only=True):
    account_credits: int | None
    amount: int | None


class FundTotal(msgspec.Struct, kw_only=True):
    fund: str
    count: int | None
    amount: int | None


class FacilityTypeTotal(msgspec.Struct, kw_only=True):
    facility_type: str
    count: int | None
    amount: int | None


class FundAndType(msgspec.Struct, kw_only=True):
    fund: str
    facility_type: str
    count: int | None
    amount: int | None


class DayTotal(msgspec.Struct, kw_only=True):
    date: dt.date
    count: int | None
    amount: int | None


class Figures(msgspec.Struct, kw_only=True):
    income: Income
    settlements: int | None
    reversals: int
    medfee_sumamt: int | None
    expenditure_total: int | None
    per_fund: list[FundTotal]
    per_facility_type: list[FacilityTypeTotal]
    per_fund_and_facility_type: list[FundAndType]
    per_day: list[DayTotal]


class PublishedReport(msgspec.Struct, kw_only=True):
    """One entry of the public list."""

    report_id: str
    title: str
    period_from: dt.date
    period_to: dt.date
    published_at: dt.datetime


class PublicReport(PublishedReport, kw_only=True):
    figures: Figures


class PublishedReports(msgspec.Struct, kw_only=True):
    items: list[PublishedReport]
