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
    handled: bool
    handled_note: str | None
    handled_by: str | None  # the operator's id
    handled_by_name: str | None
    handled_at: dt.datetime | None


class Decision(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    note: Note = "no note"
    reason: Note | None = None  # the console's name for it; wins over ``note``

    @property
    def text(self) -> str:
        return self.reason if self.reason is not None else self.note


class HandleFlag(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    note: Note


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
    # Breakdowns: expenditure per fund and facility type, settlements per business day
    # (count, fund and account paid), supervision flags raised per rule.
    by_fund_and_facility_type: list[FundFacilityType] = []
    per_day: list[DayFigures] = []
    flags_per_rule: list[RuleCount] = []


class ReviewLine(msgspec.Struct, kw_only=True):
    """A fee line as the settlement stored it, with the catalog's name for its code."""

    line_no: int
    code: str
    name: str | None = None
    chrgitm_lv: str
    unit_price: int
    quantity: int
    total: int
    overlmt_selfpay: int
    fulamt_ownpay_amt: int
    preselfpay_amt: int
    inscp_scp_amt: int


class MaskedPerson(msgspec.Struct, kw_only=True):
    """The settlement's person as a reviewer sees it: nothing that names them."""

    psn_name: str  # the family name's first character, the rest starred
    certno: str  # the mask
    gend: str
    birth_year: int
    psn_type: str


class ReviewFacility(msgspec.Struct, kw_only=True):
    fixmedins_code: str
    fixmedins_name: str
    type: str
    level: str | None
    credit_rating: str
    status: str


class ReviewDetail(msgspec.Struct, kw_only=True):
    setl_id: str
    review_status: str
    note: str | None
    settlement: SetlInfo  # the policy split: Step 3 amounts and the fund parts
    lines: list[ReviewLine]
    person: MaskedPerson
    facility: ReviewFacility
    flags: list[FlagInfo]


class FundFacilityType(msgspec.Struct, kw_only=True):
    fund: str
    facility_type: str
    amount: int
    count: int


class TypeCount(msgspec.Struct, frozen=True, kw_only=True):
    """A facility type's settlements in a period (each once, whatever its funds) and how
    many facilities of that type they were at."""

    settlements: int
    facilities: int


class DayFigures(msgspec.Struct, kw_only=True):
    date: dt.date
    count: int
    amount: int


class RuleCount(msgspec.Struct, kw_only=True):
    rule: str
    count: int
