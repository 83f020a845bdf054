"""Wire structs of settlement (national 2206/2207 field names)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Final, Literal

import msgspec

from cardsvc.types import Insutype, Text

ItemCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,50}$")]
MedType = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{2}$")]
MdtrtId = Annotated[str, msgspec.Meta(pattern=r"^[\x21-\x7e]{1,64}$")]
CardToken = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
# Bounded so that 500 lines at the largest price and quantity stay far inside bigint.
UnitPrice = Annotated[int, msgspec.Meta(ge=0, le=10_000_000_000)]
CaseId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9]{1,32}$")]
# Fee lines one settlement takes, whoever asks (the native request's ``feedetail``, the lines
# a gateway settlement takes from its visit).
MAX_SETTLEMENT_LINES: Final = 500


class FeeDetail(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    code: ItemCode
    unit_price: UnitPrice
    quantity: Annotated[int, msgspec.Meta(ge=1, le=100_000)]


class SettleRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    card_token: CardToken
    insutype: Insutype
    med_type: MedType
    mdtrt_id: MdtrtId
    feedetail: Annotated[
        list[FeeDetail], msgspec.Meta(min_length=1, max_length=MAX_SETTLEMENT_LINES)
    ]
    acct_used_flag: bool = True
    injury_case_id: CaseId | None = None
    delivery_type: Literal["normal", "cesarean"] | None = None


class FundPayment(msgspec.Struct, kw_only=True):
    fund_pay_type: str
    fund_payamt: int


class SetlInfo(msgspec.Struct, kw_only=True):
    """Every field of Step 3 (docs/policy.md), plus who and when; ``setl_id`` None in a preview."""

    setl_id: str | None
    setl_time: dt.datetime
    psn_no: str
    card_no: str
    fixmedins_code: str
    insutype: str
    med_type: str
    mdtrt_id: str
    policy_version: str
    medfee_sumamt: int
    fulamt_ownpay_amt: int
    overlmt_selfpay: int
    preselfpay_amt: int
    inscp_scp_amt: int
    act_pay_dedc: int
    hifp_pay: int
    pool_prop_selfpay: int
    acct_pay: int
    fund_pay_sumamt: int
    psn_part_amt: int
    psn_cash_pay: int
    balc: int
    setldetail: list[FundPayment]
    review_required: bool
    status: Literal["preview", "settled", "reversed"]


class ReverseRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: Text = "requested by facility"


class AdminReversalRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An administrator reverses a settlement its facility cannot or will not: why, always."""

    reason: Text


class Reversal(msgspec.Struct, kw_only=True):
    reversal_id: str
    setl_id: str
    revs_time: dt.datetime
    acct_refund: int
    fund_refund: int
    balc: int
    reason: str


class SettlementListItem(msgspec.Struct, kw_only=True):
    """One settlement in a list: who, where, when, the totals and its state."""

    setl_id: str
    psn_no: str
    card_no: str
    fixmedins_code: str
    insutype: str
    med_type: str
    setl_time: dt.datetime
    setl_date: dt.date
    medfee_sumamt: int
    fund_pay_sumamt: int
    acct_pay: int
    psn_cash_pay: int
    status: str
    review_status: str
    clearing_date: dt.date | None
