"""The engine against an independent reading of the policy (``reference.py``), to the fen.

Random sequences of settlements (and reversals of earlier ones, and account credits) for one
person are run step by step through ``cardsvc.settlement.policy.settle`` and through
``reference.reference_settle``; every Step 3 field, every refusal code and the year state and
balance after every step must be equal. The policy's worked examples E1-E6 anchor the
reference itself to the text (docs/policy.md).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardsvc.settlement.params import CURRENT_POLICY_VERSION, load_params
from cardsvc.settlement.policy import (
    CatalogItem,
    Enrolment,
    FacilityInfo,
    FeeLine,
    InjuryCase,
    PolicyRefusal,
    SettlementRequest,
    Snapshot,
    Split,
    YearState,
    apply_delta,
    settle,
)
from tests.unit.settlement import reference as ref

PARAMS = load_params(CURRENT_POLICY_VERSION)
DATE = dt.date(2026, 3, 15)
DAY = dt.timedelta(days=1)
PSN_NO = "4401000000000001"
OTHER_PSN_NO = "4401000000000002"

STEP3 = ref.STEP3_FIELDS

# Reference year keys <-> the engine's YearState fields.
YEAR_FIELDS = {
    "employee_pooled_paid": "hifp_310",
    "employee_segment_paid": "seg_310",
    "employee_inpatient_count": "inpatient_310",
    "resident_pooled_paid": "hifp_390",
    "resident_outpatient_fund_paid": "outpatient_fund_390",
    "prenatal_fund_paid": "prenatal_510",
    "deliveries": "deliveries_510",
}

ENGINE_CATALOG = {
    code: CatalogItem(
        code=code,
        chrgitm_lv=item["chrgitm_lv"],
        selfpay_prop=item.get("selfpay_prop"),
        max_price=item.get("max_price"),
        work_injury=item.get("work_injury", False),
    )
    for code, item in ref.CATALOG.items()
}

ALL = ("310", "390", "410", "510")


def _facility(type_: str = "hospital", level: str | None = "3", **changes: Any) -> dict:
    facility = {
        "type": type_,
        "level": level,
        "credit_rating": "A",
        "status": "active",
        "agreements": ALL,
    }
    facility.update(changes)
    return facility


FACILITIES = {
    "H-community": _facility(level="community"),
    "H-1": _facility(level="1"),
    "H-2": _facility(level="2"),
    "H-3": _facility(level="3"),
    "H-3-C": _facility(level="3", credit_rating="C"),
    "H-1-B": _facility(level="1", credit_rating="B"),
    "H-2-D": _facility(level="2", credit_rating="D"),
    "H-1-suspended": _facility(level="1", status="suspended"),
    "H-2-no390": _facility(level="2", agreements=("310", "410", "510")),
    "P": _facility("pharmacy", None, agreements=("310", "410")),
    "P-all": _facility("pharmacy", None),
    "P-C": _facility("pharmacy", None, credit_rating="C"),
}
HOSPITALS = [k for k, f in FACILITIES.items() if f["type"] == "hospital"]
GOOD_HOSPITALS = ["H-community", "H-1", "H-2", "H-3"] * 3 + ["H-2-no390"]
PHARMACIES = [k for k, f in FACILITIES.items() if f["type"] == "pharmacy"]


def _case(psn_no: str = PSN_NO, status: str = "approved", frm=DATE, to=DATE) -> dict:
    return {"psn_no": psn_no, "status": status, "valid_from": frm, "valid_to": to}


INJURY_CASES = {
    "IC-OK": _case(frm=dt.date(2026, 1, 1), to=dt.date(2026, 12, 31)),
    "IC-EDGE": _case(),  # valid exactly on the settlement date: both ends included
    "IC-PENDING": _case(status="pending", frm=dt.date(2026, 1, 1), to=dt.date(2026, 12, 31)),
    "IC-OTHER": _case(psn_no=OTHER_PSN_NO, frm=dt.date(2026, 1, 1), to=dt.date(2026, 12, 31)),
    "IC-ENDED": _case(frm=dt.date(2025, 1, 1), to=DATE - DAY),
    "IC-LATER": _case(frm=DATE + DAY, to=dt.date(2026, 12, 31)),
}


# --- Glue: reference inputs -> engine inputs ---------------------------------------------


def engine_year(state: dict[str, int]) -> YearState:
    return YearState(**{YEAR_FIELDS[k]: state[k] for k in ref.YEAR_KEYS})


def year_of(year: YearState) -> dict[str, int]:
    return {k: getattr(year, f) for k, f in YEAR_FIELDS.items()}


def engine_snapshot(
    person: dict, facility: dict, request: dict, balance: int, year: YearState
) -> Snapshot:
    case_id = request.get("injury_case_id")
    case = person["injury_cases"].get(case_id)
    if case is None and request.get("offer_wrong_case"):
        # The snapshot holds a valid case of this person, but not the one the request names.
        case, case_id = person["injury_cases"]["IC-OK"], "IC-OK"
    return Snapshot(
        psn_no=person["psn_no"],
        psn_type=person["psn_type"],
        card_status=person["card_status"],
        settle_date=request["date"],
        balance=balance,
        year=year,
        enrolments=tuple(
            Enrolment(insutype=e["insutype"], begndate=e["begndate"], enddate=e["enddate"])
            for e in person["enrolments"]
        ),
        facility=FacilityInfo(
            fixmedins_code="F001",
            type=facility["type"],
            level=facility["level"],
            credit_rating=facility["credit_rating"],
            status=facility["status"],
            agreements=frozenset(facility["agreements"]),
        ),
        catalog=ENGINE_CATALOG,
        injury_case=None
        if case is None
        else InjuryCase(
            case_id=case_id,
            psn_no=case["psn_no"],
            status=case["status"],
            valid_from=case["valid_from"],
            valid_to=case["valid_to"],
        ),
    )


def engine_request(request: dict) -> SettlementRequest:
    return SettlementRequest(
        insutype=request["insutype"],
        med_type=request["med_type"],
        acct_used_flag=request.get("acct_used_flag", True),
        injury_case_id=request.get("injury_case_id"),
        delivery_type=request.get("delivery_type"),
        lines=tuple(FeeLine(code=c, unit_price=p, quantity=q) for c, p, q in request["lines"]),
    )


def step3_of(split: Split) -> dict[str, Any]:
    out = {f: getattr(split, f) for f in STEP3 if f != "setldetail"}
    out["setldetail"] = [
        {"fund_pay_type": d.fund_pay_type, "fund_payamt": d.fund_payamt} for d in split.setldetail
    ]
    out["review_required"] = split.review_required
    return out


class Run:
    """One person's sequence, through the engine and the reference side by side."""

    def __init__(self, person: dict, balance: int, year: dict[str, int]) -> None:
        self.person = person
        self.ref_state = ref.new_state(balance, **year)
        self.eng_balance = balance
        self.eng_year = engine_year(self.ref_state)
        self.done: list[tuple[dict, Split]] = []  # accepted, not reversed
        self.log: list[str] = []

    def check_states(self) -> None:
        assert self.eng_balance == self.ref_state["balance"], self.log
        assert year_of(self.eng_year) == {k: self.ref_state[k] for k in ref.YEAR_KEYS}, self.log

    def settle(self, facility_key: str, request: dict) -> dict | str:
        facility = FACILITIES[facility_key]
        self.log.append(f"settle at {facility_key}: {request} state={self.ref_state}")
        expected_codes = None
        try:
            expected: dict | str = ref.reference_settle(
                self.ref_state, self.person, facility, request
            )
        except ref.RefError as exc:
            expected = exc.code
            expected_codes = exc.codes
        snap = engine_snapshot(self.person, facility, request, self.eng_balance, self.eng_year)
        try:
            split = settle(PARAMS, snap, engine_request(request))
        except PolicyRefusal as exc:
            assert exc.code == expected, (exc.code, expected, self.log)
            if exc.code == "UNKNOWN_ITEM":
                assert sorted(set(exc.details["codes"])) == expected_codes, self.log
            return exc.code
        assert isinstance(expected, dict), (expected, step3_of(split), self.log)
        got = step3_of(split)
        want = {k: expected[k] for k in (*STEP3, "review_required")}
        assert got == want, (
            {k: (got[k], want[k]) for k in want if got[k] != want[k]},
            self.log,
        )
        self.ref_state = expected["state_after"]
        self.eng_balance = split.balc
        self.eng_year = apply_delta(self.eng_year, split.year_delta)
        self.done.append((expected, split))
        self.check_states()
        return expected

    def reverse(self, pick: int) -> None:
        if not self.done:
            return
        expected, split = self.done.pop(pick % len(self.done))
        self.log.append(f"reverse {expected}")
        self.ref_state = ref.reference_reverse(self.ref_state, expected)
        self.eng_year = apply_delta(self.eng_year, split.year_delta, -1)
        self.eng_balance += split.acct_pay
        self.check_states()

    def credit(self, amount: int) -> None:
        self.log.append(f"credit {amount}")
        self.ref_state["balance"] += amount
        self.eng_balance += amount


# --- Strategies --------------------------------------------------------------------------

CODES = [
    *["A-AMOX"] * 3,
    *["B-CEF"] * 3,
    *["B-STENT"] * 2,
    *["C-VIT"] * 2,
    *["W-SUT"] * 3,
    "REF-B-GAUZE",
    "REF-A-CAP",
    "REF-C-MASK",
    *["REF-W-PLATE"] * 2,
    "REF-B-ODD",
]
EDGE_PRICES = [0, 1, 49, 50, 51, 1999, 2000, 2001, 4999, 5000, 5001, 33333, 33334, 80000, 80001]

prices = st.one_of(
    st.integers(0, 5_000),
    st.integers(0, 200_000),
    st.integers(200_000, 3_000_000),
    st.integers(3_000_000, 30_000_000),
    st.sampled_from(EDGE_PRICES),
)
item_code = st.integers(0, 49).flatmap(
    lambda roll: st.sampled_from(["X-NOPE", "X-GONE"]) if roll == 0 else st.sampled_from(CODES)
)
quantities = st.integers(0, 3).flatmap(
    lambda roll: st.integers(1, 120) if roll == 0 else st.integers(1, 3)
)
fee_line = st.tuples(item_code, prices, quantities)

FITTING = {"310": ["11", "21", "41"], "390": ["11", "21"], "410": ["11", "21", "41"]}
FITTING["510"] = ["51", "52"]


@st.composite
def settle_step(draw: st.DrawFn, schemes: tuple[str, ...]) -> tuple[str, str, dict]:
    insutype = draw(
        st.sampled_from(schemes) if draw(st.integers(0, 9)) < 9 else st.sampled_from(ALL)
    )
    if draw(st.integers(0, 9)) == 0:
        med_type = draw(st.sampled_from(["11", "21", "41", "51", "52"]))
    else:
        med_type = draw(st.sampled_from(FITTING[insutype]))
    roll = draw(st.integers(0, 19))
    if roll < 2:
        facility = draw(st.sampled_from(sorted(FACILITIES)))
    elif med_type == "41":
        facility = draw(st.sampled_from(PHARMACIES))
    elif roll < 4:
        facility = draw(st.sampled_from(HOSPITALS))
    else:
        facility = draw(st.sampled_from(GOOD_HOSPITALS))
    request: dict[str, Any] = {
        "insutype": insutype,
        "med_type": med_type,
        "date": DATE,
        "lines": draw(st.lists(fee_line, min_size=1, max_size=4)),
        "acct_used_flag": draw(st.integers(0, 4)) > 0,
    }
    if insutype == "410" or draw(st.integers(0, 9)) == 0:
        others = [*sorted(INJURY_CASES), "IC-NONE", None]
        pick = draw(st.integers(0, 2 * len(others)))
        request["injury_case_id"] = others[pick - 1] if 1 <= pick <= len(others) else "IC-OK"
        request["offer_wrong_case"] = draw(st.booleans())
    if (med_type == "52" and draw(st.integers(0, 7)) != 3) or draw(st.integers(0, 9)) == 4:
        request["delivery_type"] = draw(st.sampled_from(["normal", "cesarean"]))
    return ("settle", facility, request)


@st.composite
def any_step(draw: st.DrawFn, schemes: tuple[str, ...]) -> tuple:
    """Mostly settlements; about one step in ten reverses an earlier one, one in twenty
    credits the account (rolls away from the range's ends, which Hypothesis favours)."""
    roll = draw(st.integers(0, 19))
    if roll in (5, 6):
        return ("reverse", draw(st.integers(0, 1000)))
    if roll == 7:
        return ("credit", draw(st.integers(1, 500_000)))
    return draw(settle_step(schemes))


def enrolment(insutype: str, kind: str) -> dict:
    begin, end = {
        "open": (dt.date(2020, 1, 1), None),
        "ends-today": (dt.date(2020, 1, 1), DATE),
        "ended": (dt.date(2020, 1, 1), DATE - DAY),
        "starts-today": (DATE, None),
        "starts-tomorrow": (DATE + DAY, None),
    }[kind]
    return {"insutype": insutype, "begndate": begin, "enddate": end}


def near(draw: st.DrawFn, cap: int) -> int:
    """A year total already paid: nothing, some, or close to (or at) the annual cap."""
    start = draw(st.sampled_from([0, 0, cap // 3, cap - 300_000, cap - 60_000, cap]))
    return min(cap, start + draw(st.integers(0, 50_000)))


@st.composite
def scenario(draw: st.DrawFn, psn_type: str) -> tuple[dict, int, dict, list]:
    if psn_type == "resident":
        schemes: tuple[str, ...] = ("390",)
        if draw(st.integers(0, 4)) == 0:
            schemes = ("390", "510")  # a resident cannot be insured under 510
    else:
        schemes = tuple(
            s for s in ("310", "410", "510") if s == "310" or draw(st.integers(0, 2)) > 0
        )
    kinds = ["open"] * 20 + ["ends-today", "ended", "starts-today", "starts-tomorrow"]
    person = {
        "psn_no": PSN_NO,
        "psn_type": psn_type,
        # Off the bounds on purpose: Hypothesis favours a range's ends.
        "card_status": {17: "frozen", 18: "loss_reported", 19: "cancelled"}.get(
            draw(st.integers(0, 39)), "active"
        ),
        "enrolments": [enrolment(s, draw(st.sampled_from(kinds))) for s in schemes],
        "injury_cases": INJURY_CASES,
    }
    balance = draw(st.one_of(st.just(0), st.integers(0, 10_000), st.integers(0, 2_000_000)))
    year = {
        "employee_pooled_paid": near(draw, 20_000_000),
        "employee_segment_paid": min(
            ref.EMP_SEGMENT_THRESHOLD.get(psn_type, 0),
            draw(st.sampled_from([0, 0, 30_000, 65_000, 95_000, 100_000]))
            + draw(st.integers(0, 5_000)),
        ),
        "employee_inpatient_count": draw(st.sampled_from([0, 0, 0, 1, 2])),
        "resident_pooled_paid": near(draw, 15_000_000),
        "resident_outpatient_fund_paid": draw(st.one_of(st.just(0), st.integers(0, 50_000))),
        "prenatal_fund_paid": draw(st.one_of(st.just(0), st.integers(0, 100_000))),
        "deliveries": draw(st.sampled_from([0, 0, 1])),
    }
    steps = draw(st.lists(any_step(schemes), min_size=1, max_size=15))
    return person, balance, year, steps


@pytest.mark.parametrize("psn_type", ["in_service", "retired", "resident"])
@settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_random_sequences_match_the_reference(psn_type: str, data: st.DataObject) -> None:
    person, balance, year, steps = data.draw(scenario(psn_type), label="scenario")
    run = Run(person, balance, year)
    run.check_states()
    for step in steps:
        if step[0] == "settle":
            run.settle(step[1], step[2])
        elif step[0] == "reverse":
            run.reverse(step[1])
        else:
            run.credit(step[1])


# --- Targeted sequences (caps, repeats, limits) through both ------------------------------


def _person(psn_type: str, *schemes: str) -> dict:
    return {
        "psn_no": PSN_NO,
        "psn_type": psn_type,
        "card_status": "active",
        "enrolments": [enrolment(s, "open") for s in schemes],
        "injury_cases": INJURY_CASES,
    }


def _req(insutype: str, med_type: str, *lines: tuple[str, int, int], **extra: Any) -> dict:
    return {"insutype": insutype, "med_type": med_type, "date": DATE, "lines": list(lines), **extra}


def test_employee_cap_is_reached_and_given_back_by_reversal() -> None:
    run = Run(_person("in_service", "310"), 0, {})
    first = run.settle("H-3", _req("310", "21", ("A-AMOX", 25_000_000, 1)))
    assert isinstance(first, dict) and first["hifp_pay"] == 19_936_000
    second = run.settle("H-3", _req("310", "21", ("A-AMOX", 1_000_000, 1)))
    assert isinstance(second, dict)
    assert second["act_pay_dedc"] == 40000 and second["hifp_pay"] == 64000
    run.settle("H-2", _req("310", "11", ("A-AMOX", 500_000, 1)))
    run.reverse(0)  # the first admission: cap room and the full deductible come back
    again = run.settle("H-3", _req("310", "21", ("A-AMOX", 1_000_000, 1)))
    assert isinstance(again, dict) and again["act_pay_dedc"] == 40000


def test_resident_outpatient_limit_and_levels() -> None:
    run = Run(_person("resident", "390"), 0, {})
    for _ in range(3):
        run.settle("H-1", _req("390", "11", ("A-AMOX", 40_000, 1)))
    assert run.ref_state["resident_outpatient_fund_paid"] == 50_000
    out = run.settle("H-3", _req("390", "11", ("A-AMOX", 40_000, 1)))
    assert isinstance(out, dict) and out["hifp_pay"] == 0 and out["pool_prop_selfpay"] == 40_000


def test_prenatal_limit_and_second_delivery() -> None:
    run = Run(_person("in_service", "510"), 0, {})
    for _ in range(3):
        run.settle("H-2", _req("510", "51", ("A-AMOX", 45_000, 1)))
    assert run.ref_state["prenatal_fund_paid"] == 100_000
    run.settle("H-2", _req("510", "52", ("A-AMOX", 350_000, 1), delivery_type="normal"))
    assert run.settle("H-2", _req("510", "52", ("A-AMOX", 1, 1), delivery_type="normal")) == (
        "MATERNITY_LIMIT"
    )
    run.reverse(3)
    second = run.settle("H-2", _req("510", "52", ("B-STENT", 600_000, 1), delivery_type="cesarean"))
    assert isinstance(second, dict) and second["setldetail"] == [
        {"fund_pay_type": "510100", "fund_payamt": 500_000}
    ]


def test_delivery_quotas_and_delivery_type() -> None:
    for delivery_type, fund in (("normal", 300_000), ("cesarean", 500_000)):
        run = Run(_person("retired", "510"), 0, {})
        big = ("A-AMOX", 700_000, 1), ("B-CEF", 2500, 2), ("C-VIT", 100, 1)
        out = run.settle("H-1", _req("510", "52", *big, delivery_type=delivery_type))
        assert isinstance(out, dict) and out["fund_pay_sumamt"] == fund
        assert out["hifp_pay"] == 0 and out["pool_prop_selfpay"] == 0
    assert run.settle("H-1", _req("510", "52", ("A-AMOX", 1, 1))) == "DELIVERY_TYPE_REQUIRED"
    assert run.settle("H-1", _req("510", "52", ("X-NOPE", 1, 1))) == "DELIVERY_TYPE_REQUIRED"
    assert run.settle("P-all", _req("510", "52", ("A-AMOX", 1, 1))) == "MED_TYPE_NOT_ALLOWED"


def test_edges_of_dates_and_injury_cases() -> None:
    person = _person("in_service", "310", "410")
    person["enrolments"] = [enrolment("310", "ends-today"), enrolment("410", "starts-today")]
    run = Run(person, 10_000, {})
    assert isinstance(run.settle("H-2", _req("310", "11", ("A-AMOX", 100, 1))), dict)
    work = ("W-SUT", 1000, 1), ("REF-W-PLATE", 90_000, 1)
    out = run.settle("H-2", _req("410", "11", *work, injury_case_id="IC-EDGE"))
    assert isinstance(out, dict) and out["inscp_scp_amt"] == 81_000
    assert out["overlmt_selfpay"] == 10_000 and out["acct_pay"] == 0
    for case_id in ("IC-PENDING", "IC-OTHER", "IC-ENDED", "IC-LATER", "IC-NONE", None):
        for wrong in (False, True):
            req = _req("410", "11", *work, injury_case_id=case_id, offer_wrong_case=wrong)
            assert run.settle("H-2", req) == "INJURY_CASE_INVALID", case_id
    person["enrolments"] = [enrolment("310", "ended"), enrolment("410", "starts-tomorrow")]
    for insutype in ("310", "410"):
        req = _req(insutype, "11", ("A-AMOX", 100, 1), injury_case_id="IC-OK")
        assert run.settle("H-2", req) == "INSURANCE_NOT_ACTIVE"


# --- the policy's worked examples, through the reference (and the engine) ----------------


def _example(state: dict, person: dict, facility: dict, request: dict, expected: dict) -> dict:
    got = ref.reference_settle(state, person, facility, request)
    for field, value in expected.items():
        assert got[field] == value, (field, got[field], value)
    assert got["medfee_sumamt"] == (
        got["fulamt_ownpay_amt"]
        + got["overlmt_selfpay"]
        + got["preselfpay_amt"]
        + got["inscp_scp_amt"]
    )
    # The engine must agree on the same inputs too.
    snap = engine_snapshot(person, facility, request, state["balance"], engine_year(state))
    assert step3_of(settle(PARAMS, snap, engine_request(request))) == {
        k: got[k] for k in (*STEP3, "review_required")
    }
    return got


def test_e1() -> None:
    _example(
        ref.new_state(50000),
        _person("in_service", "310"),
        FACILITIES["H-3"],
        _req("310", "21", ("A-AMOX", 100000, 3), ("B-CEF", 2500, 4), ("C-VIT", 3000, 1)),
        {
            "medfee_sumamt": 313000,
            "fulamt_ownpay_amt": 3000,
            "overlmt_selfpay": 2000,
            "preselfpay_amt": 800,
            "inscp_scp_amt": 307200,
            "act_pay_dedc": 80000,
            "hifp_pay": 181760,
            "pool_prop_selfpay": 45440,
            "acct_pay": 50000,
            "fund_pay_sumamt": 181760,
            "psn_part_amt": 131240,
            "psn_cash_pay": 81240,
            "balc": 0,
            "setldetail": [{"fund_pay_type": "310100", "fund_payamt": 181760}],
        },
    )


def test_e2() -> None:
    got = _example(
        ref.new_state(3000, employee_segment_paid=65000),
        _person("retired", "310"),
        FACILITIES["H-community"],
        _req("310", "11", ("A-AMOX", 12000, 1), ("B-CEF", 1800, 2)),
        {
            "medfee_sumamt": 15600,
            "preselfpay_amt": 360,
            "inscp_scp_amt": 15240,
            "act_pay_dedc": 5000,
            "hifp_pay": 6516,
            "pool_prop_selfpay": 724,
            "acct_pay": 3000,
            "psn_cash_pay": 6084,
            "balc": 0,
        },
    )
    assert got["state_after"]["employee_segment_paid"] == 70000


def test_e3() -> None:
    _example(
        ref.new_state(10000),
        _person("in_service", "310"),
        FACILITIES["P"],
        _req("310", "41", ("B-CEF", 1800, 3), ("C-VIT", 2000, 1)),
        {
            "medfee_sumamt": 7400,
            "fulamt_ownpay_amt": 2000,
            "preselfpay_amt": 540,
            "inscp_scp_amt": 4860,
            "hifp_pay": 0,
            "acct_pay": 5400,
            "psn_cash_pay": 2000,
            "balc": 4600,
            "setldetail": [],
        },
    )


def test_e4() -> None:
    _example(
        ref.new_state(),
        _person("in_service", "310", "410"),
        FACILITIES["H-2"],
        _req("410", "21", ("W-SUT", 50000, 2), ("A-AMOX", 3000, 1), injury_case_id="IC-OK"),
        {
            "medfee_sumamt": 103000,
            "fulamt_ownpay_amt": 3000,
            "inscp_scp_amt": 100000,
            "setldetail": [{"fund_pay_type": "410100", "fund_payamt": 100000}],
            "acct_pay": 0,
            "psn_cash_pay": 3000,
        },
    )


def test_e5() -> None:
    _example(
        ref.new_state(resident_outpatient_fund_paid=48000),
        _person("resident", "390"),
        FACILITIES["H-1"],
        _req("390", "11", ("A-AMOX", 10000, 1)),
        {"inscp_scp_amt": 10000, "hifp_pay": 2000, "pool_prop_selfpay": 8000, "psn_cash_pay": 8000},
    )


def test_e6() -> None:
    person = _person("in_service", "510")
    request = _req(
        "510",
        "52",
        ("A-AMOX", 400000, 1),
        ("B-STENT", 200000, 1),
        ("C-VIT", 5000, 1),
        delivery_type="cesarean",
    )
    got = _example(
        ref.new_state(),
        person,
        FACILITIES["H-3"],
        request,
        {
            "medfee_sumamt": 605000,
            "fulamt_ownpay_amt": 5000,
            "inscp_scp_amt": 600000,
            "setldetail": [{"fund_pay_type": "510100", "fund_payamt": 500000}],
            "psn_cash_pay": 105000,
        },
    )
    with pytest.raises(ref.RefError) as refused:
        ref.reference_settle(
            got["state_after"], person, FACILITIES["H-3"], {**request, "delivery_type": "normal"}
        )
    assert refused.value.code == "MATERNITY_LIMIT"
