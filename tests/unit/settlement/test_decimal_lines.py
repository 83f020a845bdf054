"""Lines with a decimal price and count (the national interface's lines), Step 1 and whole
settlements: worked examples checked by hand, the engine against the reference's independent
reading (``reference.py``, exact fractions) on random lines, and integer lines through the
decimal rule giving exactly what they always gave."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardsvc.national.units import count_e4, fen, price_e4
from cardsvc.settlement import policydoc
from cardsvc.settlement.policy import (
    E4,
    DecimalLine,
    FeeLine,
    Line,
    LineSplit,
    PolicyRefusal,
    check_line_amount,
    decompose_line,
    line_result,
    round_e8,
    settle,
)
from tests.unit.settlement import (
    CATALOG,
    PARAMS,
    assert_step3_identities,
    pharmacy,
    request,
    snapshot,
)
from tests.unit.settlement import reference as ref
from tests.unit.settlement.test_against_reference import (
    DATE,
    ENGINE_CATALOG,
    FACILITIES,
    GOOD_HOSPITALS,
    INJURY_CASES,
    PHARMACIES,
    engine_snapshot,
    engine_year,
    enrolment,
    step3_of,
)
from tests.unit.settlement.test_against_reference import (
    engine_request as integer_engine_request,
)

LIMITS = PARAMS.amount_limits


def dline(code: str, pric: str, cnt: str, sumamt: str) -> DecimalLine:
    """A line as the national interface sends it (yuan, count, yuan), converted exactly."""
    return DecimalLine(
        code=code,
        price_e4=price_e4(Decimal(pric)),
        count_e4=count_e4(Decimal(cnt)),
        total=fen(Decimal(sumamt), "det_item_fee_sumamt"),
    )


def decimal_request(insutype: str, med_type: str, *lines: Line, **extra: Any) -> Any:
    return msgspec.structs.replace(request(insutype, med_type, **extra), lines=lines)


# --- worked examples, figured by hand -------------------------------------------------------

# (what, insutype, line, expected: total, over, fulamt_ownpay, preselfpay, inscp, selfpay_prop)
LINE_EXAMPLES = [
    # 12.34 yuan x 0.5 = 6.17 yuan exactly.
    ("half a box", "310", dline("A-AMOX", "12.34", "0.5", "6.17"), (617, 0, 0, 0, 617, 0)),
    # 12.35 x 0.5 = 6.175 yuan = 617.5 fen: half a fen rounds up to 618.
    ("617.5 fen rounds up", "310", dline("A-AMOX", "12.35", "0.5", "6.18"), (618, 0, 0, 0, 618, 0)),
    # 0.123456 x 100 = 12.3456 yuan = 1234.56 fen -> 1235; class B, 20 %: pct(1235, 20) = 247.
    (
        "a 6-decimal price",
        "310",
        dline("B-STENT", "0.123456", "100", "12.35"),
        (1235, 0, 0, 247, 988, 20),
    ),
    # 20.123456 x 2.5 = 50.30864 yuan -> 5031 fen; max_price 2000 fen: the excess
    # 12.3456 fen x 2.5 = 30.864 -> 31 fen over; base 5000; pct(5000, 10) = 500.
    (
        "over the max price",
        "310",
        dline("B-CEF", "20.123456", "2.5", "50.31"),
        (5031, 31, 0, 500, 4500, 10),
    ),
    # 20.01 x 0.5 = 10.005 yuan -> 1001 fen; the excess 1 fen x 0.5 = half a fen -> 1 fen over.
    (
        "over rounds half up",
        "390",
        dline("B-CEF", "20.01", "0.5", "10.01"),
        (1001, 1, 0, 100, 900, 10),
    ),
    # Class C: all of the base is own-pay, a selfpay_prop of 100 %.
    (
        "a quarter, class C",
        "310",
        dline("C-VIT", "20.00", "0.25", "5.00"),
        (500, 0, 500, 0, 0, 100),
    ),
    # 33.333333 x 3 = 99.999999 yuan = 9999.9999 fen -> 10000; work injury: in scope.
    ("work injury", "410", dline("W-SUT", "33.333333", "3", "100.00"), (10000, 0, 0, 0, 10000, 0)),
    # 1234.5678 x 0.5 = 617.2839 yuan -> 61728 fen; maternity takes class B whole.
    (
        "maternity, class B",
        "510",
        dline("B-STENT", "1234.5678", "0.5", "617.28"),
        (61728, 0, 0, 0, 61728, 0),
    ),
]


@pytest.mark.parametrize(
    ("what", "insutype", "line", "expected"), LINE_EXAMPLES, ids=[e[0] for e in LINE_EXAMPLES]
)
def test_line_result_worked_examples(
    what: str, insutype: str, line: DecimalLine, expected: tuple[int, ...]
) -> None:
    item = CATALOG[line.code]
    got = line_result(PARAMS, insutype, "11", line, item)
    assert (
        got.total,
        got.over,
        got.fulamt_ownpay,
        got.preselfpay,
        got.inscp,
        got.selfpay_prop,
    ) == expected
    assert (got.code, got.chrgitm_lv, got.max_price) == (line.code, item.chrgitm_lv, item.max_price)
    assert got.total == got.over + got.fulamt_ownpay + got.preselfpay + got.inscp


@pytest.mark.parametrize(
    ("line", "expected_fen"),
    [
        (dline("A-AMOX", "12.35", "0.5", "6.17"), 618),  # half a fen is never rounded down
        (dline("A-AMOX", "12.35", "0.5", "6.19"), 618),
        (dline("B-CEF", "20.123456", "2.5", "50.30"), 5031),
        (dline("B-STENT", "0.123456", "100", "12.34"), 1235),  # truncation is not the rule
    ],
)
def test_a_declared_amount_that_is_not_price_times_count_is_refused(
    line: DecimalLine, expected_fen: int
) -> None:
    with pytest.raises(PolicyRefusal) as caught:
        line_result(PARAMS, "310", "11", line, CATALOG[line.code])
    refusal = caught.value
    assert refusal.code == "FEE_AMOUNT_MISMATCH" and refusal.status == 422
    assert refusal.details == {
        "total_fen": line.total,
        "expected_fen": expected_fen,
        "code": line.code,
    }
    assert line.code in refusal.message
    assert refusal.message.endswith(f"rounded to the fen, ¥{Decimal(expected_fen).scaleb(-2)}")


def test_the_mismatch_names_the_line_and_comes_before_everything_else() -> None:
    req = decimal_request(
        "310",
        "21",
        dline("A-AMOX", "1", "1", "1.00"),
        dline("B-CEF", "20.123456", "2.5", "50.30"),
        FeeLine(code="X-NOPE", unit_price=LIMITS.unit_price + 1, quantity=1),
    )
    with pytest.raises(PolicyRefusal) as caught:  # a lost card, an unknown item: still this
        settle(PARAMS, snapshot("310", card_status="lost"), req)
    assert caught.value.code == "FEE_AMOUNT_MISMATCH"
    assert caught.value.details["line_no"] == 2
    assert caught.value.message.startswith("line 2: the amount ¥50.30 is not the price ¥20.123456")


def test_a_whole_pharmacy_purchase_of_fractional_boxes() -> None:
    # B-CEF 18.00 x 1.5 = 27.00 (under max_price): pre pct(2700, 10) = 270, in scope 2430.
    # C-VIT 20.00 x 0.25 = 5.00: own-pay 500. Account min(10000, 2430 + 270) = 2700.
    req = decimal_request(
        "310",
        "41",
        dline("B-CEF", "18.00", "1.5", "27.00"),
        dline("C-VIT", "20.00", "0.25", "5.00"),
    )
    split = settle(PARAMS, snapshot("310", facility=pharmacy(), balance=10000), req)
    assert_step3_identities(split, 10000)
    got = {name: getattr(split, name) for name in ref.STEP3_FIELDS if name != "setldetail"}
    assert got == {
        "medfee_sumamt": 3200,
        "fulamt_ownpay_amt": 500,
        "overlmt_selfpay": 0,
        "preselfpay_amt": 270,
        "inscp_scp_amt": 2430,
        "act_pay_dedc": 0,
        "hifp_pay": 0,
        "pool_prop_selfpay": 0,
        "acct_pay": 2700,
        "fund_pay_sumamt": 0,
        "psn_part_amt": 3200,
        "psn_cash_pay": 500,
        "balc": 7300,
    }
    assert split.setldetail == ()


def test_decimal_and_integer_lines_settle_together() -> None:
    # E1's lines, B-CEF's 4 boxes at 25.00 sent as a decimal line: the figures of E1.
    req = decimal_request(
        "310",
        "21",
        FeeLine(code="A-AMOX", unit_price=100000, quantity=3),
        dline("B-CEF", "25.00", "4", "100.00"),
        FeeLine(code="C-VIT", unit_price=3000, quantity=1),
    )
    split = settle(PARAMS, snapshot("310", balance=50000), req)
    assert (split.medfee_sumamt, split.overlmt_selfpay, split.preselfpay_amt) == (313000, 2000, 800)
    assert (split.hifp_pay, split.acct_pay, split.psn_cash_pay) == (181760, 50000, 81240)


# --- amount limits ---------------------------------------------------------------------------


def _yuan(fen_: int) -> str:
    return str(Decimal(fen_).scaleb(-2))


LIMIT_CASES: list[tuple[str, DecimalLine, str | None]] = [
    (
        "price at the limit",
        dline("A-AMOX", _yuan(LIMITS.unit_price), "1", _yuan(LIMITS.unit_price)),
        None,
    ),
    (
        "price a millionth of a yuan above",
        dline("A-AMOX", _yuan(LIMITS.unit_price) + "0001", "0.5", _yuan(LIMITS.unit_price // 2)),
        "unit_price",
    ),
    (
        "count at the limit",
        dline("A-AMOX", "0.01", str(LIMITS.quantity), _yuan(LIMITS.quantity)),
        None,
    ),
    (
        "count a 10^-4 above",
        dline("A-AMOX", "0.0001", f"{LIMITS.quantity}.0001", _yuan(LIMITS.quantity // 100)),
        "quantity",
    ),
    (
        "amount at the limit",
        dline("A-AMOX", _yuan(LIMITS.line_total // 4), "4", _yuan(LIMITS.line_total)),
        None,
    ),
    (
        "amount a fen above",
        dline("A-AMOX", _yuan(LIMITS.line_total // 2) + "5", "2", _yuan(LIMITS.line_total + 1)),
        "line_total",
    ),
]


@pytest.mark.parametrize(
    ("what", "line", "refused"), LIMIT_CASES, ids=[case[0] for case in LIMIT_CASES]
)
def test_amount_limits_hold_decimal_lines(
    what: str, line: DecimalLine, refused: str | None
) -> None:
    req = decimal_request("310", "21", line)
    if refused is None:
        assert settle(PARAMS, snapshot("310"), req).medfee_sumamt == line.total
        assert line_result(PARAMS, "310", "21", line, CATALOG["A-AMOX"]).total == line.total
        return
    for attempt in (
        lambda: settle(PARAMS, snapshot("310"), req),
        lambda: line_result(PARAMS, "310", "21", line, CATALOG["A-AMOX"]),
    ):
        with pytest.raises(PolicyRefusal) as caught:
            attempt()
        assert caught.value.code == "AMOUNT_LIMIT_EXCEEDED"
        assert caught.value.details["limit"] == refused


def test_a_fractional_price_above_the_limit_is_named_with_its_decimals() -> None:
    line = dline("A-AMOX", _yuan(LIMITS.unit_price) + "0001", "0.5", _yuan(LIMITS.unit_price // 2))
    with pytest.raises(PolicyRefusal) as caught:
        settle(PARAMS, snapshot("310"), decimal_request("310", "21", line))
    assert "the unit price ¥2,000,000.000001 exceeds the limit of ¥2,000,000.00" in (
        caught.value.message
    )
    assert caught.value.details["amount_e4"] == LIMITS.unit_price * E4 + 1


def test_the_settlement_total_counts_decimal_lines() -> None:
    full = LIMITS.settlement_total // LIMITS.line_total
    rest = LIMITS.settlement_total % LIMITS.line_total
    # Whole lines at the line limit, as 1.6 units at the price that gives it, and the rest.
    price = _yuan(LIMITS.line_total * 5 // 8)
    lines = [dline("A-AMOX", price, "1.6", _yuan(LIMITS.line_total))]
    lines = lines * full + [dline("C-VIT", _yuan(rest), "1", _yuan(rest))]
    ok = decimal_request("310", "21", *lines)
    assert settle(PARAMS, snapshot("310"), ok).medfee_sumamt == LIMITS.settlement_total
    over = decimal_request("310", "21", *lines, dline("A-AMOX", "0.0001", "0.5", "0.00"))
    assert settle(PARAMS, snapshot("310"), over).medfee_sumamt == LIMITS.settlement_total
    over = decimal_request("310", "21", *lines, dline("A-AMOX", "0.01", "0.5", "0.01"))
    with pytest.raises(PolicyRefusal) as caught:
        settle(PARAMS, snapshot("310"), over)
    assert caught.value.details["limit"] == "settlement_total"


@pytest.mark.parametrize(
    "line",
    [
        DecimalLine(code="A-AMOX", price_e4=100, count_e4=0, total=0),
        DecimalLine(code="A-AMOX", price_e4=-100, count_e4=E4, total=0),
        DecimalLine(code="A-AMOX", price_e4=100, count_e4=-E4, total=0),
    ],
)
def test_a_line_built_without_its_constraints_is_refused_not_settled(line: DecimalLine) -> None:
    with pytest.raises(PolicyRefusal) as caught:
        line_result(PARAMS, "310", "11", line, CATALOG["A-AMOX"])
    assert caught.value.code == "AMOUNT_INVALID"


def test_line_result_refuses_an_insutype_the_policy_does_not_have() -> None:
    with pytest.raises(PolicyRefusal) as caught:
        line_result(PARAMS, "999", "11", dline("A-AMOX", "1", "1", "1.00"), CATALOG["A-AMOX"])
    assert caught.value.code == "MED_TYPE_NOT_ALLOWED"


# --- integer lines through the decimal rule --------------------------------------------------

fee_lines = st.builds(
    FeeLine,
    code=st.sampled_from(sorted(ref.CATALOG)),
    unit_price=st.one_of(st.integers(0, 100_000), st.integers(0, LIMITS.unit_price)),
    quantity=st.integers(1, 200),
)


def as_decimal(line: FeeLine) -> DecimalLine:
    return DecimalLine(
        code=line.code,
        price_e4=line.unit_price * E4,
        count_e4=line.quantity * E4,
        total=line.unit_price * line.quantity,
    )


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(line=fee_lines, insutype=st.sampled_from(["310", "390", "410", "510"]))
def test_an_integer_line_splits_the_same_either_way(line: FeeLine, insutype: str) -> None:
    item = ENGINE_CATALOG[line.code]
    mine = decompose_line(PARAMS, insutype, line, item)
    assert mine == decompose_line(PARAMS, insutype, as_decimal(line), item)
    # ... and it is the integer rule: over = max(0, unit_price - max_price) x quantity.
    ceiling = item.max_price
    over = 0 if ceiling is None else max(0, line.unit_price - ceiling) * line.quantity
    assert (mine.total, mine.over) == (line.unit_price * line.quantity, over)
    check_line_amount(line)  # never refused: a FeeLine's amount is its price x quantity


@pytest.mark.parametrize(
    ("amount_e8", "expected"),
    [(0, 0), (1, 0), (49_999_999, 0), (50_000_000, 1), (149_999_999, 1), (150_000_000, 2)],
)
def test_round_e8_rounds_half_up(amount_e8: int, expected: int) -> None:
    assert round_e8(amount_e8) == expected


# --- random decimal lines against the reference ----------------------------------------------

EDGE_PRICES_E4 = sorted(
    {
        p * E4 + d
        for p in (0, 2000, 5000, 33333, 80000)
        for d in (-2, -1, 0, 1, 2)
        if p * E4 + d >= 0
    }
)
prices_e4 = st.one_of(
    st.integers(0, 5_000 * E4),  # up to 50 yuan, any of the 6 decimals
    st.integers(0, 100_000 * E4),
    st.integers(0, LIMITS.unit_price * E4 + 2),
    st.sampled_from(EDGE_PRICES_E4),
)
counts_e4 = st.one_of(
    st.integers(1, 3 * E4),
    st.sampled_from([1, E4 // 2, E4, 5 * E4 // 4, 3 * E4 // 2]),
    st.integers(1, LIMITS.quantity * E4 + 2),
)


@st.composite
def wire_line(draw: st.DrawFn, codes: list[str]) -> tuple[str, Decimal, Decimal, Decimal]:
    """``(code, pric, cnt, det_item_fee_sumamt)`` as the reference reads them: the declared
    amount is right, or now and then a fen off."""
    code = draw(st.sampled_from(codes))
    pric = Decimal(draw(prices_e4)).scaleb(-6)
    cnt = Decimal(draw(counts_e4)).scaleb(-4)
    right = ref.r(Fraction(pric) * Fraction(cnt) * 100)
    declared = right + draw(st.sampled_from([0] * 8 + [-1, 1]))
    return code, pric, cnt, Decimal(max(0, declared)).scaleb(-2)


def engine_line(line: tuple[Any, ...]) -> Line:
    if len(line) == 3:
        code, price, qty = line
        return FeeLine(code=code, unit_price=price, quantity=qty)
    code, pric, cnt, sumamt = line
    return DecimalLine(
        code=code,
        price_e4=price_e4(pric),
        count_e4=count_e4(cnt),
        total=fen(sumamt, "det_item_fee_sumamt"),
    )


def engine_request(request: dict[str, Any]) -> Any:
    integer = integer_engine_request({**request, "lines": []})
    return msgspec.structs.replace(integer, lines=tuple(engine_line(x) for x in request["lines"]))


def _reference_line(insutype: str, line: tuple[Any, ...]) -> dict[str, int] | str:
    try:
        ref.declared_total(line)
        if ref._line_over_limits(line):
            return "AMOUNT_LIMIT_EXCEEDED"
        return ref.decompose(insutype, ref.CATALOG[line[0]], line)
    except ref.RefError as exc:
        return exc.code


def _engine_line(insutype: str, line: tuple[Any, ...]) -> dict[str, int] | str:
    try:
        got: LineSplit = line_result(
            PARAMS, insutype, "11", engine_line(line), ENGINE_CATALOG[line[0]]
        )
    except PolicyRefusal as exc:
        return exc.code
    return {
        "total": got.total,
        "over": got.over,
        "full": got.fulamt_ownpay,
        "pre": got.preselfpay,
        "inscp": got.inscp,
    }


@settings(max_examples=600, derandomize=True, database=None, deadline=None)
@given(line=wire_line(sorted(ref.CATALOG)), insutype=st.sampled_from(["310", "390", "410", "510"]))
def test_line_result_matches_the_reference(line: tuple[Any, ...], insutype: str) -> None:
    assert _engine_line(insutype, line) == _reference_line(insutype, line), line


SCHEME_OF = {"in_service": ("310", "410", "510"), "retired": ("310", "410", "510")}
SCHEME_OF["resident"] = ("390",)
MED_TYPES = {"310": ["11", "21", "41"], "390": ["11", "21"], "410": ["11", "21", "41"]}
MED_TYPES["510"] = ["51", "52"]
int_line = st.tuples(
    st.sampled_from(sorted(ref.CATALOG)), st.integers(0, 200_000), st.integers(1, 3)
)


@st.composite
def settlement(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, int], str, dict[str, Any]]:
    psn_type = draw(st.sampled_from(sorted(SCHEME_OF)))
    schemes = SCHEME_OF[psn_type]
    person = {
        "psn_no": "4401000000000001",
        "psn_type": psn_type,
        "card_status": "active",
        "enrolments": [enrolment(s, "open") for s in schemes],
        "injury_cases": INJURY_CASES,
    }
    insutype = draw(st.sampled_from(schemes))
    med_type = draw(st.sampled_from(MED_TYPES[insutype]))
    facility = draw(st.sampled_from(PHARMACIES if med_type == "41" else GOOD_HOSPITALS))
    codes = sorted(ref.CATALOG)
    lines = draw(
        st.lists(st.one_of(wire_line(codes), wire_line(codes), int_line), min_size=1, max_size=4)
    )
    request = {"insutype": insutype, "med_type": med_type, "date": DATE, "lines": lines}
    request["acct_used_flag"] = draw(st.booleans())
    if insutype == "410":
        request["injury_case_id"] = "IC-OK"
    if med_type == "52":
        request["delivery_type"] = draw(st.sampled_from(["normal", "cesarean"]))
    state = ref.new_state(
        draw(st.one_of(st.just(0), st.integers(0, 2_000_000))),
        employee_segment_paid=draw(st.sampled_from([0, 65_000, 100_000])),
        employee_inpatient_count=draw(st.sampled_from([0, 1])),
        resident_outpatient_fund_paid=draw(st.sampled_from([0, 48_000])),
    )
    return person, state, facility, request


@settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=settlement())
def test_settlements_with_decimal_lines_match_the_reference(
    case: tuple[dict[str, Any], dict[str, int], str, dict[str, Any]],
) -> None:
    person, state, facility_key, request_ = case
    facility = FACILITIES[facility_key]
    try:
        expected: dict[str, Any] | str = ref.reference_settle(state, person, facility, request_)
    except ref.RefError as exc:
        expected = exc.code
    snap = engine_snapshot(person, facility, request_, state["balance"], engine_year(state))
    try:
        split = settle(PARAMS, snap, engine_request(request_))
    except PolicyRefusal as exc:
        assert exc.code == expected, request_
        return
    assert isinstance(expected, dict), (expected, request_)
    assert step3_of(split) == {k: expected[k] for k in (*ref.STEP3_FIELDS, "review_required")}
    assert_step3_identities(split, state["balance"])


# --- docs/policy.md ---------------------------------------------------------------------------


def test_the_docs_decimal_lines_carry_the_hand_checked_figures() -> None:
    block = policydoc.render_blocks(PARAMS)["decimal-lines"]
    for figures in (
        "| 12.35 × 0.5 | 617.5 → 618 | no `max_price` | 618 | 0 | 0 | 618 |",
        "| 0.123456 × 100 | 1,234.56 → 1,235 | no `max_price` | 1,235 | 0 | 247 | 988 |",
        "| 20.123456 × 2.5 | 5,030.864 → 5,031 | 30.864 → 31 | 5,000 | 0 | 500 | 4,500 |",
        "| 25.00 × 4 | 10,000 → 10,000 | 2,000 → 2,000 | 8,000 | 0 | 800 | 7,200 |",
        "`FEE_AMOUNT_MISMATCH`: the line of B-CEF: the amount ¥50.30",
    ):
        assert figures in block


def test_a_docs_figure_the_rule_does_not_give_fails_rendering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = policydoc.line_result

    def one_fen_more_over(*args: Any) -> LineSplit:
        split = engine(*args)
        return msgspec.structs.replace(split, over=split.over + 1, inscp=split.inscp - 1)

    monkeypatch.setattr(policydoc, "line_result", one_fen_more_over)
    with pytest.raises(policydoc.StepMismatch, match="over"):
        policydoc.render_blocks(PARAMS)
