"""Builders shared by the policy engine tests: the example catalog, a person, a facility."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import msgspec

from cardsvc.settlement.params import CURRENT_POLICY_VERSION, load_params
from cardsvc.settlement.policy import (
    CatalogItem,
    DeliveryType,
    Enrolment,
    FacilityInfo,
    FeeLine,
    InjuryCase,
    SettlementRequest,
    Snapshot,
    Split,
    YearState,
)

PARAMS = load_params(CURRENT_POLICY_VERSION)
SETTLE_DATE = dt.date(2026, 3, 15)
PSN_NO = "4401000000000001"
ALL_SCHEMES = frozenset({"310", "390", "410", "510"})

# docs/policy.md, "Worked examples", the catalog.
CATALOG: Mapping[str, CatalogItem] = {
    "A-AMOX": CatalogItem(code="A-AMOX", chrgitm_lv="A"),
    "B-CEF": CatalogItem(code="B-CEF", chrgitm_lv="B", selfpay_prop=10, max_price=2000),
    "B-STENT": CatalogItem(code="B-STENT", chrgitm_lv="B", selfpay_prop=20),
    "C-VIT": CatalogItem(code="C-VIT", chrgitm_lv="C"),
    "W-SUT": CatalogItem(code="W-SUT", chrgitm_lv="A", work_injury=True),
}

INJURY_CASE = InjuryCase(
    case_id="IC-1",
    psn_no=PSN_NO,
    status="approved",
    valid_from=dt.date(2026, 1, 1),
    valid_to=dt.date(2026, 12, 31),
)

DEFAULT_PSN_TYPE = {
    "310": "in_service",
    "390": "resident",
    "410": "in_service",
    "510": "in_service",
}


HOSPITAL = FacilityInfo(
    fixmedins_code="H001",
    type="hospital",
    level="3",
    credit_rating="A",
    status="active",
    agreements=ALL_SCHEMES,
)
PHARMACY = msgspec.structs.replace(HOSPITAL, fixmedins_code="P001", type="pharmacy", level=None)


def hospital(level: str = "3", **changes: Any) -> FacilityInfo:
    return msgspec.structs.replace(HOSPITAL, level=level, **changes)


def pharmacy(**changes: Any) -> FacilityInfo:
    return msgspec.structs.replace(PHARMACY, **changes)


def enrolled(*insutypes: str) -> tuple[Enrolment, ...]:
    return tuple(Enrolment(insutype=i, begndate=dt.date(2020, 1, 1)) for i in insutypes)


def snapshot(
    insutype: str,
    *,
    facility: FacilityInfo | None = None,
    psn_type: str | None = None,
    balance: int = 0,
    year: YearState | None = None,
    card_status: str = "active",
    enrolments: tuple[Enrolment, ...] | None = None,
    injury_case: InjuryCase | None = None,
    catalog: Mapping[str, CatalogItem] = CATALOG,
) -> Snapshot:
    return Snapshot(
        psn_no=PSN_NO,
        psn_type=psn_type or DEFAULT_PSN_TYPE[insutype],
        card_status=card_status,
        settle_date=SETTLE_DATE,
        balance=balance,
        year=year or YearState(),
        enrolments=enrolled(insutype) if enrolments is None else enrolments,
        facility=facility or hospital(),
        catalog=catalog,
        injury_case=injury_case,
    )


def request(
    insutype: str,
    med_type: str,
    *lines: tuple[str, int, int],
    acct_used_flag: bool = True,
    injury_case_id: str | None = None,
    delivery_type: DeliveryType | None = None,
) -> SettlementRequest:
    return SettlementRequest(
        insutype=insutype,
        med_type=med_type,
        acct_used_flag=acct_used_flag,
        injury_case_id=injury_case_id,
        delivery_type=delivery_type,
        lines=tuple(FeeLine(code=c, unit_price=p, quantity=q) for c, p, q in lines),
    )


def assert_step3_identities(split: Split, balance: int) -> None:
    """The policy's Step 3 identities between the fields of one settlement."""
    assert split.medfee_sumamt == (
        split.fulamt_ownpay_amt + split.overlmt_selfpay + split.preselfpay_amt + split.inscp_scp_amt
    )
    for line in split.lines:
        assert line.total == line.over + line.fulamt_ownpay + line.preselfpay + line.inscp
    assert split.medfee_sumamt == sum(line.total for line in split.lines)
    assert split.fund_pay_sumamt == sum(p.fund_payamt for p in split.setldetail)
    assert split.psn_part_amt == split.medfee_sumamt - split.fund_pay_sumamt
    assert split.psn_cash_pay == split.psn_part_amt - split.acct_pay
    assert split.balc == balance - split.acct_pay
