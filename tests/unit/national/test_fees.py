"""Fee lines of a 2204/2301 upload without IO: exact units, refund lines, what a re-upload
may change, and the ``result`` row in yuan."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest

from cardsvc.errors import CardsvcError
from cardsvc.national import fees
from cardsvc.national.visit_models import FeeDetail
from cardsvc.national.visits import VisitLine
from cardsvc.settlement import policy
from cardsvc.settlement.params import CURRENT_POLICY_VERSION, load_params

PARAMS = load_params(CURRENT_POLICY_VERSION)
CATALOG = {
    "A-AMOX": policy.CatalogItem(code="A-AMOX", chrgitm_lv="A"),
    "B-CEF": policy.CatalogItem(code="B-CEF", chrgitm_lv="B", selfpay_prop=10, max_price=2000),
    "C-VIT": policy.CatalogItem(code="C-VIT", chrgitm_lv="C"),
    "W-SUT": policy.CatalogItem(code="W-SUT", chrgitm_lv="A", work_injury=True),
}


def detail(sn: str, code: str, pric: Any, cnt: Any, amount: Any, **extra: Any) -> FeeDetail:
    row = {
        "feedetl_sn": sn,
        "mdtrt_id": "M1",
        "psn_no": "1000000000000001",
        "med_list_codg": code,
        "pric": pric,
        "cnt": cnt,
        "det_item_fee_sumamt": amount,
        **extra,
    }
    return msgspec.json.decode(msgspec.json.encode(row), type=FeeDetail)


def priced(*args: Any, refunds: bool = True, **extra: Any) -> fees.PricedLine:
    return fees.priced(detail(*args, **extra), {"rxno": "R1"}, refunds_allowed=refunds)


def stored(
    line: fees.PricedLine, *, status: str = "active", setl_id: str | None = None
) -> VisitLine:
    split = policy.line_result(PARAMS, "310", "21", line.as_policy_line(), CATALOG[line.code])
    return VisitLine(
        feedetl_sn=line.feedetl_sn,
        chrg_bchno=line.chrg_bchno,
        code=line.code,
        price_e4=line.price_e4,
        count_e4=line.count_e4,
        total=line.total,
        setl_id=setl_id,
        status=status,  # type: ignore[arg-type]
        init_feedetl_sn=line.init_feedetl_sn,
        created_msgid="MSG1",
        result=split,
    )


def plan(lines: list[fees.PricedLine], before: list[VisitLine] | None = None) -> fees.UploadPlan:
    known = {line.feedetl_sn: line for line in before or []}
    return fees.plan_upload(PARAMS, "310", "21", lines, known, CATALOG)


@pytest.mark.parametrize(
    ("pric", "cnt", "amount", "expected"),
    [
        ("12.00", 1, "12.00", (12_000_000, 10_000, 1200)),
        (18, "2", 36, (18_000_000, 20_000, 3600)),
        ("0.333333", "3", "1.00", (333_333, 30_000, 100)),
        ("25.5", "1.5", "38.25", (25_500_000, 15_000, 3825)),
    ],
)
def test_units_are_exact(pric: Any, cnt: Any, amount: Any, expected: tuple[int, int, int]) -> None:
    line = priced("1", "A-AMOX", pric, cnt, amount)
    assert (line.price_e4, line.count_e4, line.total) == expected
    assert line.details == {"rxno": "R1"}


@pytest.mark.parametrize(
    ("pric", "cnt", "amount", "extra", "code"),
    [
        ("1.0000001", 1, "1.00", {}, "AMOUNT_INVALID"),
        (1, "0.00001", "1.00", {}, "AMOUNT_INVALID"),
        (1, 1, "1.001", {}, "AMOUNT_INVALID"),
        ("-1", 1, "-1", {}, "AMOUNT_INVALID"),
        (1, 0, 0, {}, "AMOUNT_INVALID"),
        (1, -1, -1, {}, "INPUT_INVALID"),  # a negative count names the line it refunds
        (1, 1, 1, {"init_feedetl_sn": "9"}, "INPUT_INVALID"),
        (1, -1, 1, {"init_feedetl_sn": "9"}, "AMOUNT_INVALID"),  # the sign of the count
        ("Infinity", 1, 1, {}, "AMOUNT_INVALID"),
    ],
)
def test_refused_lines(pric: Any, cnt: Any, amount: Any, extra: dict[str, Any], code: str) -> None:
    with pytest.raises(CardsvcError) as refused:
        priced("1", "A-AMOX", pric, cnt, amount, **extra)
    assert refused.value.code == code


def test_refunds_only_where_allowed() -> None:
    with pytest.raises(CardsvcError) as refused:
        priced("2", "A-AMOX", 1, -1, -1, init_feedetl_sn="1", refunds=False)
    assert refused.value.code == "INPUT_INVALID"


def test_the_amount_must_be_price_times_count() -> None:
    with pytest.raises(CardsvcError) as refused:
        plan([priced("1", "A-AMOX", "0.333333", 3, "1.01")])
    assert refused.value.code == "FEE_AMOUNT_MISMATCH"


def test_unknown_items_are_named() -> None:
    with pytest.raises(CardsvcError) as refused:
        plan([priced("1", "Z-ONE", 1, 1, 1), priced("2", "Y-TWO", 1, 1, 1)])
    assert refused.value.code == "UNKNOWN_ITEM"
    assert refused.value.details == {"codes": ["Y-TWO", "Z-ONE"]}


def test_a_new_line_gets_the_policy_split() -> None:
    line = priced("1", "B-CEF", "25.5", "1.5", "38.25")
    result = plan([line])
    [(_, split)] = result.results
    assert (split.total, split.over, split.preselfpay, split.inscp) == (3825, 825, 300, 2700)
    assert [new.feedetl_sn for new in result.store] == ["1"]
    row = fees.fee_result("M1", line, split)
    assert (row.overlmt_amt, row.selfpay_prop, row.pric_uplmt_amt) == (
        Decimal("8.25"),
        Decimal("0.1"),
        Decimal("20.00"),
    )
    assert (row.pric, row.cnt) == (Decimal("25.500000"), Decimal("1.5000"))


def test_the_same_line_again_is_answered_as_before_and_not_stored() -> None:
    line = priced("1", "A-AMOX", 12, 1, 12)
    result = plan([line], [stored(line)])
    assert result.store == [] and len(result.results) == 1


@pytest.mark.parametrize("status", ["active", "refunded"])
def test_other_content_under_a_used_feedetl_sn_is_refused(status: str) -> None:
    before = stored(priced("1", "A-AMOX", 12, 1, 12), status=status)
    with pytest.raises(CardsvcError) as refused:
        plan([priced("1", "A-AMOX", 12, 2, 24)], [before])
    assert refused.value.code == "FEEDETL_SN_CONFLICT"


def test_a_cancelled_line_is_replaced() -> None:
    before = stored(priced("1", "A-AMOX", 12, 1, 12), status="cancelled")
    result = plan([priced("1", "A-AMOX", 12, 2, 24)], [before])
    assert [new.total for new in result.store] == [2400]


def test_a_refund_takes_back_the_whole_line_with_its_split_negated() -> None:
    original = stored(priced("1", "B-CEF", 25, 4, 100))
    refund = priced("2", "B-CEF", 25, -4, -100, init_feedetl_sn="1")
    result = plan([refund], [original])
    [(_, split)] = result.results
    assert (split.total, split.over, split.preselfpay, split.inscp) == (
        -original.result.total,
        -original.result.over,
        -original.result.preselfpay,
        -original.result.inscp,
    )
    assert result.refunded == ["1"]
    row = fees.fee_result("M1", refund, split)
    assert (row.det_item_fee_sumamt, row.cnt) == (Decimal("-100.00"), Decimal("-4.0000"))


@pytest.mark.parametrize(
    ("refund", "original", "code"),
    [
        (("2", "B-CEF", 25, -3, -75), {}, "REFUND_MISMATCH"),  # part of the line
        (("2", "C-VIT", 25, -4, -100), {}, "REFUND_MISMATCH"),  # another item
        (("2", "B-CEF", 25, -4, -100), {"setl_id": "S1"}, "FEE_LINE_SETTLED"),
        (("2", "B-CEF", 25, -4, -100), {"status": "cancelled"}, "FEE_LINE_CLOSED"),
    ],
)
def test_refusals_of_a_refund(refund: tuple[Any, ...], original: dict[str, Any], code: str) -> None:
    before = stored(priced("1", "B-CEF", 25, 4, 100), **original)
    with pytest.raises(CardsvcError) as refused:
        plan([priced(*refund, init_feedetl_sn="1")], [before])
    assert refused.value.code == code


def test_a_refund_of_an_unknown_line() -> None:
    with pytest.raises(CardsvcError) as refused:
        plan([priced("2", "B-CEF", 25, -4, -100, init_feedetl_sn="1")])
    assert refused.value.code == "FEE_LINE_NOT_FOUND"


def test_one_message_one_visit_and_each_feedetl_sn_once() -> None:
    assert fees.check_message([detail("1", "A-AMOX", 1, 1, 1)]) == ("M1", "1000000000000001")
    with pytest.raises(CardsvcError):
        fees.check_message([detail("1", "A-AMOX", 1, 1, 1), detail("1", "A-AMOX", 2, 1, 2)])
    with pytest.raises(CardsvcError):
        fees.check_message(
            [detail("1", "A-AMOX", 1, 1, 1), detail("2", "A-AMOX", 1, 1, 1, mdtrt_id="M2")]
        )
