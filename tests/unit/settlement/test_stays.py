"""A stay settled in parts (mid-stay settlements, then the final ones): the deductible is per
admission, so the parts together charge the person exactly what one settlement of the same
lines charges, to the fen; each part equals the reference's reading (``reference.py``).
A settlement without a stay (the native API's) is what it always was."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardsvc.settlement.policy import (
    PolicyRefusal,
    Snapshot,
    Split,
    Stay,
    YearState,
    apply_delta,
    settle,
)
from tests.unit.settlement import reference as ref
from tests.unit.settlement.test_against_reference import (
    DATE,
    FACILITIES,
    PARAMS,
    _person,
    engine_request,
    engine_snapshot,
    engine_year,
    near,
    prices,
    step3_of,
)

# The fields that add up over the parts of a stay (balc is the balance after: the last part's).
ADDITIVE = (
    "medfee_sumamt",
    "fulamt_ownpay_amt",
    "overlmt_selfpay",
    "preselfpay_amt",
    "inscp_scp_amt",
    "act_pay_dedc",
    "hifp_pay",
    "pool_prop_selfpay",
    "acct_pay",
    "fund_pay_sumamt",
    "psn_part_amt",
    "psn_cash_pay",
)

E1_LINES = [("A-AMOX", 100000, 3), ("B-CEF", 2500, 4), ("C-VIT", 3000, 1)]


def _after(stay: Stay, split: Split) -> Stay:
    """The stay once ``split`` (settled this year) is one of its parts."""
    return Stay(
        settled_this_year=stay.settled_this_year + 1,
        inscp_scp_amt=stay.inscp_scp_amt + split.inscp_scp_amt,
        act_pay_dedc=stay.act_pay_dedc + split.act_pay_dedc,
        fund_pay_sumamt=stay.fund_pay_sumamt + split.fund_pay_sumamt,
    )


class Stayed(msgspec.Struct, kw_only=True):
    parts: list[Split]
    year: YearState
    balance: int


def _in_parts(
    person: dict[str, Any],
    facility: str,
    base: dict[str, Any],
    parts: list[list[tuple[str, int, int]]],
    balance: int,
    year: dict[str, int],
) -> Stayed:
    """Settle ``parts`` one after the other as one stay, through the engine and the
    reference side by side (every Step 3 field equal, part by part)."""
    state = ref.new_state(balance, **year)
    eng_year, stay, done, splits = engine_year(state), Stay(), [], []
    for lines in parts:
        request = {**base, "lines": lines}
        expected = ref.reference_settle(state, person, FACILITIES[facility], request, done)
        snap: Snapshot = engine_snapshot(person, FACILITIES[facility], request, balance, eng_year)
        split = settle(PARAMS, msgspec.structs.replace(snap, stay=stay), engine_request(request))
        want = {k: expected[k] for k in (*ref.STEP3_FIELDS, "review_required")}
        assert step3_of(split) == want
        done.append({**expected, "date": request["date"]})
        state = expected["state_after"]
        stay, balance = _after(stay, split), split.balc
        eng_year = apply_delta(eng_year, split.year_delta)
        splits.append(split)
    return Stayed(parts=splits, year=eng_year, balance=balance)


def _assert_same_as_one(stayed: Stayed, one: Stayed) -> None:
    [whole] = one.parts
    for name in ADDITIVE:
        got = sum(getattr(part, name) for part in stayed.parts)
        assert got == getattr(whole, name), (name, got, getattr(whole, name))
    assert stayed.balance == one.balance
    assert stayed.year.hifp_310 == one.year.hifp_310
    assert stayed.year.hifp_390 == one.year.hifp_390


E1 = {"insutype": "310", "med_type": "21", "date": DATE}


def test_e1_in_two_parts_takes_the_deductible_once() -> None:
    person = _person("in_service", "310")
    one = _in_parts(person, "H-3", E1, [E1_LINES], 50000, {})
    two = _in_parts(person, "H-3", E1, [E1_LINES[:1], E1_LINES[1:]], 50000, {})
    assert one.parts[0].act_pay_dedc == 80000  # E1
    mid, final = two.parts
    assert mid.act_pay_dedc == 80000  # the stay's deductible, in its first part
    assert final.act_pay_dedc == 0  # not again, and not half again
    _assert_same_as_one(two, one)
    assert two.year.inpatient_310 == 2  # every inpatient settlement counts, as before


def test_a_further_admission_is_another_stays_settlement() -> None:
    """The stay's own earlier part does not make it a further admission; a settlement of
    another stay this year does (the deductible halved, once for the stay)."""
    person = _person("in_service", "310")
    year = {"employee_inpatient_count": 1}  # another stay settled earlier this year
    two = _in_parts(person, "H-3", E1, [E1_LINES[:1], E1_LINES[1:]], 50000, year)
    assert [p.act_pay_dedc for p in two.parts] == [40000, 0]
    one = _in_parts(person, "H-3", E1, [E1_LINES], 50000, year)
    _assert_same_as_one(two, one)


def test_a_resident_stay_in_parts_takes_the_deductible_once() -> None:
    person = _person("resident", "390")
    base = {"insutype": "390", "med_type": "21", "date": DATE}
    parts = [[("A-AMOX", 30000, 1)], [("A-AMOX", 30000, 1)], [("B-STENT", 12345, 3)]]
    stayed = _in_parts(person, "H-2", base, parts, 0, {})
    assert [p.act_pay_dedc for p in stayed.parts] == [30000, 10000, 0]  # D = 40,000 once
    one = _in_parts(person, "H-2", base, [[line for part in parts for line in part]], 0, {})
    _assert_same_as_one(stayed, one)


def test_the_fund_percentage_is_rounded_once_over_the_stay() -> None:
    """Ten parts of 1 fen beyond the deductible at 85 %: rounded part by part the fund
    would pay pct(1, 85) = 1 fen each, 10 of 10; over the stay it pays pct(10, 85) = 9, as
    one settlement of the same lines does."""
    person = _person("in_service", "310")
    parts = [[("A-AMOX", 50000, 1)]] + [[("A-AMOX", 1, 1)]] * 10
    stayed = _in_parts(person, "H-2", E1, parts, 0, {})
    one = _in_parts(person, "H-2", E1, [[line for p in parts for line in p]], 0, {})
    assert one.parts[0].hifp_pay == 9  # pct(10, 85)
    _assert_same_as_one(stayed, one)


def test_a_delivery_stay_in_parts_has_one_quota_and_is_one_delivery() -> None:
    person = _person("in_service", "510")
    base = {"insutype": "510", "med_type": "52", "date": DATE, "delivery_type": "normal"}
    parts = [[("A-AMOX", 200000, 1)], [("A-AMOX", 200000, 1)]]
    stayed = _in_parts(person, "H-3", base, parts, 0, {})
    assert [p.fund_pay_sumamt for p in stayed.parts] == [200000, 100000]  # quota 300,000
    one = _in_parts(person, "H-3", base, [[line for p in parts for line in p]], 0, {})
    _assert_same_as_one(stayed, one)
    # Another delivery (a stay of its own) that year is still refused.
    snap = engine_snapshot(person, FACILITIES["H-3"], base, 0, stayed.year)
    with pytest.raises(PolicyRefusal) as refused:
        settle(PARAMS, snap, engine_request({**base, "lines": parts[0]}))
    assert refused.value.code == "MATERNITY_LIMIT"


def test_an_empty_stay_is_a_settlement_as_it_always_was() -> None:
    """The native API's settlements name no stay: E1 as the policy's worked example."""
    person = _person("in_service", "310")
    request = {**E1, "lines": E1_LINES}
    snap = engine_snapshot(person, FACILITIES["H-3"], request, 50000, YearState())
    split = settle(PARAMS, snap, engine_request(request))
    assert split == settle(
        PARAMS, msgspec.structs.replace(snap, stay=Stay()), engine_request(request)
    )
    assert (split.act_pay_dedc, split.hifp_pay, split.psn_cash_pay) == (80000, 181760, 81240)


# --- Any stay, any split ----------------------------------------------------------------

stay_line = st.tuples(
    st.sampled_from(["A-AMOX", "B-CEF", "B-STENT", "C-VIT", "W-SUT"]),
    prices,
    st.integers(1, 4),
)


@st.composite
def stay_case(draw: st.DrawFn) -> tuple[Any, ...]:
    insutype = draw(st.sampled_from(["310", "390"]))
    psn_type = "resident" if insutype == "390" else draw(st.sampled_from(["in_service", "retired"]))
    lines = draw(st.lists(stay_line, min_size=2, max_size=8))
    cuts = sorted(draw(st.sets(st.integers(1, len(lines) - 1), min_size=1, max_size=3)))
    parts = [lines[a:b] for a, b in zip([0, *cuts], [*cuts, len(lines)], strict=True)]
    facility = draw(st.sampled_from(["H-community", "H-1", "H-2", "H-3"]))
    balance = draw(st.one_of(st.just(0), st.integers(0, 200_000), st.integers(0, 5_000_000)))
    year = {
        "employee_pooled_paid": near(draw, 20_000_000),
        "employee_inpatient_count": draw(st.sampled_from([0, 0, 1])),
        "resident_pooled_paid": near(draw, 15_000_000),
    }
    acct = draw(st.booleans())
    return insutype, psn_type, facility, parts, balance, year, acct


@settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=stay_case())
def test_any_stay_in_parts_costs_the_person_what_one_settlement_does(case: tuple) -> None:
    insutype, psn_type, facility, parts, balance, year, acct = case
    person = _person(psn_type, insutype)
    base = {"insutype": insutype, "med_type": "21", "date": DATE, "acct_used_flag": acct}
    try:
        one = _in_parts(person, facility, base, [[x for p in parts for x in p]], balance, year)
    except ref.RefError:  # e.g. the amount limits: refused alike, nothing to compare
        return
    stayed = _in_parts(person, facility, base, parts, balance, year)
    _assert_same_as_one(stayed, one)
