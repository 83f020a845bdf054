"""Eligibility: each refusal code, and that the first failing check wins."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import msgspec
import pytest

from cardsvc.errors import BusinessRuleViolation
from cardsvc.settlement.policy import (
    Enrolment,
    FacilityInfo,
    InjuryCase,
    PolicyRefusal,
    SettlementRequest,
    Snapshot,
    YearState,
    settle,
)
from tests.unit.settlement import (
    INJURY_CASE,
    PARAMS,
    SETTLE_DATE,
    enrolled,
    hospital,
    pharmacy,
    request,
    snapshot,
)

replace = msgspec.structs.replace
DAY = dt.timedelta(days=1)


def refusal(snap: Snapshot, req: SettlementRequest) -> PolicyRefusal:
    with pytest.raises(PolicyRefusal) as refused:
        settle(PARAMS, snap, req)
    return refused.value


def outpatient_310() -> SettlementRequest:
    return request("310", "11", ("A-AMOX", 1000, 1))


def work_injury(case_id: str | None = "IC-1") -> SettlementRequest:
    return request("410", "21", ("W-SUT", 1000, 1), injury_case_id=case_id)


def test_refusals_are_business_rule_violations() -> None:
    error = refusal(snapshot("310", card_status="cancelled"), outpatient_310())
    assert isinstance(error, BusinessRuleViolation)
    assert error.status == 422


@pytest.mark.parametrize("status", ["issued", "loss_reported", "replaced", "cancelled"])
def test_card_not_active_names_the_status(status: str) -> None:
    error = refusal(snapshot("310", card_status=status), outpatient_310())
    assert error.code == "CARD_NOT_ACTIVE"
    assert status in error.message
    assert error.details == {"status": status}


def test_an_expired_card_is_refused_after_its_status():
    on_expiry = replace(snapshot("310"), card_expiry=SETTLE_DATE)
    assert settle(PARAMS, on_expiry, outpatient_310()).medfee_sumamt == 1000
    expired = replace(snapshot("310"), card_expiry=SETTLE_DATE - DAY)
    error = refusal(expired, outpatient_310())
    assert error.code == "CARD_EXPIRED"
    assert error.details == {"expiry_date": (SETTLE_DATE - DAY).isoformat()}
    lost_and_expired = replace(expired, card_status="loss_reported")
    assert refusal(lost_and_expired, outpatient_310()).code == "CARD_NOT_ACTIVE"
    uninsured_and_expired = replace(expired, enrolments=())
    assert refusal(uninsured_and_expired, outpatient_310()).code == "CARD_EXPIRED"


@pytest.mark.parametrize(
    "enrolments",
    [
        (),
        enrolled("390", "410"),
        (Enrolment(insutype="310", begndate=SETTLE_DATE + DAY),),
        (Enrolment(insutype="310", begndate=dt.date(2020, 1, 1), enddate=SETTLE_DATE - DAY),),
    ],
    ids=["none", "other schemes", "starts tomorrow", "ended yesterday"],
)
def test_insurance_not_active(enrolments: tuple[Enrolment, ...]) -> None:
    error = refusal(snapshot("310", enrolments=enrolments), outpatient_310())
    assert error.code == "INSURANCE_NOT_ACTIVE"


def test_enrolment_active_on_its_first_and_last_day() -> None:
    for enrolment in (
        Enrolment(insutype="310", begndate=SETTLE_DATE),
        Enrolment(insutype="310", begndate=dt.date(2020, 1, 1), enddate=SETTLE_DATE),
    ):
        settle(PARAMS, snapshot("310", enrolments=(enrolment,)), outpatient_310())


@pytest.mark.parametrize(("insutype", "psn_type"), [("310", "resident"), ("390", "in_service")])
def test_person_type_that_does_not_fit_the_scheme(insutype: str, psn_type: str) -> None:
    req = request(insutype, "11", ("A-AMOX", 1000, 1))
    error = refusal(snapshot(insutype, psn_type=psn_type), req)
    assert error.code == "INSURANCE_NOT_ACTIVE"


@pytest.mark.parametrize(
    "facility",
    [hospital(status="suspended"), hospital(credit_rating="D")],
    ids=["suspended", "rated D"],
)
def test_facility_suspended(facility: FacilityInfo) -> None:
    error = refusal(snapshot("310", facility=facility), outpatient_310())
    assert error.code == "FACILITY_SUSPENDED"


def test_no_agreement_for_the_insutype() -> None:
    facility = hospital(agreements=frozenset({"390", "510"}))
    error = refusal(snapshot("310", facility=facility), outpatient_310())
    assert error.code == "NO_AGREEMENT"


@pytest.mark.parametrize(
    ("insutype", "med_type", "at_pharmacy"),
    [
        ("310", "21", True),  # hospital med_type at a pharmacy
        ("310", "41", False),  # pharmacy purchase at a hospital
        ("390", "41", True),  # residents have no pharmacy settlement
        ("510", "11", False),
        ("410", "51", False),
        ("310", "52", False),
    ],
)
def test_med_type_not_allowed(insutype: str, med_type: str, at_pharmacy: bool) -> None:
    agreement = frozenset({insutype})
    facility = pharmacy(agreements=agreement) if at_pharmacy else hospital(agreements=agreement)
    snap = snapshot(insutype, facility=facility)
    error = refusal(snap, request(insutype, med_type, ("A-AMOX", 1000, 1)))
    assert error.code == "MED_TYPE_NOT_ALLOWED"


def test_unknown_insutype_has_no_insurance() -> None:
    snap = snapshot("310", enrolments=enrolled("999"))
    assert refusal(snap, request("999", "11")).code == "INSURANCE_NOT_ACTIVE"


def test_delivery_without_delivery_type() -> None:
    error = refusal(snapshot("510"), request("510", "52", ("A-AMOX", 1000, 1)))
    assert error.code == "DELIVERY_TYPE_REQUIRED"


@pytest.mark.parametrize(
    ("case", "case_id"),
    [
        (None, "IC-1"),
        (INJURY_CASE, None),
        (INJURY_CASE, "IC-2"),
        (replace(INJURY_CASE, psn_no="4401000000000002"), "IC-1"),
        (replace(INJURY_CASE, status="revoked"), "IC-1"),
        (replace(INJURY_CASE, valid_from=SETTLE_DATE + DAY), "IC-1"),
        (replace(INJURY_CASE, valid_to=SETTLE_DATE - DAY), "IC-1"),
    ],
    ids=["no case", "no id", "other id", "other person", "revoked", "not yet", "expired"],
)
def test_injury_case_invalid(case: InjuryCase | None, case_id: str | None) -> None:
    snap = snapshot("410", injury_case=case)
    assert refusal(snap, work_injury(case_id)).code == "INJURY_CASE_INVALID"


def test_injury_case_valid_on_both_ends() -> None:
    for case in (
        replace(INJURY_CASE, valid_from=SETTLE_DATE),
        replace(INJURY_CASE, valid_to=SETTLE_DATE),
    ):
        settle(PARAMS, snapshot("410", injury_case=case), work_injury())


def test_unknown_items_are_listed_sorted_once() -> None:
    req = request("310", "11", ("Z-9", 1, 1), ("A-AMOX", 1, 1), ("X-1", 1, 1), ("Z-9", 2, 1))
    error = refusal(snapshot("310"), req)
    assert error.code == "UNKNOWN_ITEM"
    assert error.details == {"codes": ["X-1", "Z-9"]}


def test_second_delivery_is_maternity_limit() -> None:
    snap = snapshot("510", year=YearState(deliveries_510=1))
    req = request("510", "52", ("A-AMOX", 1000, 1), delivery_type="normal")
    assert refusal(snap, req).code == "MATERNITY_LIMIT"


def test_prenatal_after_a_delivery_is_accepted() -> None:
    snap = snapshot("510", year=YearState(deliveries_510=1))
    settle(PARAMS, snap, request("510", "51", ("A-AMOX", 1000, 1)))


def test_facility_rated_c_is_accepted_for_review() -> None:
    snap = snapshot("310", facility=hospital(credit_rating="C"))
    assert settle(PARAMS, snap, outpatient_310()).review_required
    snap = snapshot("310", facility=hospital(credit_rating="B"))
    assert not settle(PARAMS, snap, outpatient_310()).review_required


# --- first failure wins ------------------------------------------------------------------
# Each chain starts from a snapshot and request failing every check; each fix removes the
# failure just reported, and the next settle must report the next check in the policy's order.

Fix = Callable[[Snapshot, SettlementRequest], tuple[Snapshot, SettlementRequest]]


def fix_snapshot(**changes: object) -> Fix:
    return lambda snap, req: (replace(snap, **changes), req)


def fix_request(**changes: object) -> Fix:
    return lambda snap, req: (snap, replace(req, **changes))


def broken_410() -> tuple[Snapshot, SettlementRequest]:
    snap = snapshot(
        "410",
        card_status="loss_reported",
        enrolments=(),
        facility=pharmacy(status="suspended", agreements=frozenset()),
        injury_case=None,
    )
    return snap, request("410", "21", ("NOPE", 100, 1))


def broken_510() -> tuple[Snapshot, SettlementRequest]:
    snap = snapshot(
        "510",
        card_status="issued",
        psn_type="resident",
        facility=hospital(credit_rating="D", agreements=frozenset({"310"})),
        year=YearState(deliveries_510=1),
    )
    return snap, request("510", "11", ("NOPE", 100, 1))


CHAINS: list[
    tuple[str, Callable[[], tuple[Snapshot, SettlementRequest]], list[tuple[str, Fix]]]
] = [
    (
        "410",
        broken_410,
        [
            ("CARD_NOT_ACTIVE", fix_snapshot(card_status="active")),
            ("INSURANCE_NOT_ACTIVE", fix_snapshot(enrolments=enrolled("410"))),
            ("FACILITY_SUSPENDED", fix_snapshot(facility=pharmacy(agreements=frozenset()))),
            ("NO_AGREEMENT", fix_snapshot(facility=pharmacy(agreements=frozenset({"410"})))),
            ("MED_TYPE_NOT_ALLOWED", fix_request(med_type="41")),
            ("INJURY_CASE_INVALID", fix_snapshot(injury_case=INJURY_CASE)),
            ("INJURY_CASE_INVALID", fix_request(injury_case_id="IC-1")),
            ("UNKNOWN_ITEM", fix_request(lines=request("410", "41", ("W-SUT", 100, 1)).lines)),
        ],
    ),
    (
        "510",
        broken_510,
        [
            ("CARD_NOT_ACTIVE", fix_snapshot(card_status="active")),
            ("INSURANCE_NOT_ACTIVE", fix_snapshot(psn_type="in_service")),
            ("FACILITY_SUSPENDED", fix_snapshot(facility=hospital(agreements=frozenset({"310"})))),
            ("NO_AGREEMENT", fix_snapshot(facility=hospital())),
            ("MED_TYPE_NOT_ALLOWED", fix_request(med_type="52")),
            ("DELIVERY_TYPE_REQUIRED", fix_request(delivery_type="normal")),
            ("UNKNOWN_ITEM", fix_request(lines=request("510", "52", ("A-AMOX", 100, 1)).lines)),
            ("MATERNITY_LIMIT", fix_snapshot(year=YearState())),
        ],
    ),
]


@pytest.mark.parametrize(("name", "broken", "steps"), CHAINS, ids=[c[0] for c in CHAINS])
def test_first_failure_wins(
    name: str,
    broken: Callable[[], tuple[Snapshot, SettlementRequest]],
    steps: list[tuple[str, Fix]],
) -> None:
    snap, req = broken()
    for expected_code, fix in steps:
        assert refusal(snap, req).code == expected_code
        snap, req = fix(snap, req)
    settle(PARAMS, snap, req)  # every check now passes
