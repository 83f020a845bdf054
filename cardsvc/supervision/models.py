"""Wire structs of fund supervision: flags, reviews and the fund report."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec

from cardsvc.settlement.models import SetlInfo

Note = Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f]+$")]


class FlagInfo(msgspec.Struct, kw_only=True):
    flag_id: int
    rule: str
    setl_id: str
    psn_no: str
    fixmedins_code: str
    details: dict[str, Any]
    created_at: dt.datetime


class Decision(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    note: Note = "no note"


class Review(msgspec.Struct, kw_only=True):
    setl_id: str
    review_status: str
    note: str | None
    settlement: SetlInfo


class FundLine(msgspec.Struct, kw_only=True):
    fund: str  # fund_pay_type, or "acct" for personal accounts
    fixmedins_type: str
    settlements: int
    amount: int


class FundReport(msgspec.Struct, kw_only=True):
    period_from: dt.date
    period_to: dt.date
    account_credits: int
    account_credit_amount: int
    settlements: int
    reversals: int
    medfee_sumamt: int
    expenditure: list[FundLine]
    expenditure_total: int
    # Settlements of the period above the amount limits (stored before they existed): in
    # no figure above; how many, and the first of them.
    out_of_limits: int
    out_of_limits_setl_ids: list[str]
