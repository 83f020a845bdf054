"""The interface's units without IO: a figure is bounded before it becomes an integer (a
short text like ``1e999999`` is refused at once), and scaling never rounds a digit away."""

from __future__ import annotations

import time
from decimal import Decimal

import msgspec
import pytest

from cardsvc.errors import CardsvcError
from cardsvc.national import envelope, units

HUGE = ["1e999999", "-1e999999", "1E+999999999999999999", "1e13", "1000000000000"]


@pytest.mark.parametrize("text", HUGE)
def test_a_figure_out_of_range_is_refused_at_once(text: str) -> None:
    started = time.monotonic()
    for convert in (units.fen, units.price_e4, units.count_e4):
        with pytest.raises(CardsvcError) as refused:
            convert(Decimal(text), "x")
        assert refused.value.code == "AMOUNT_INVALID"
        assert len(refused.value.message) < 80  # the value is not repeated whole
    with pytest.raises(CardsvcError) as refused:
        units.whole(Decimal(text), "fixmedins_setl_cnt")
    assert refused.value.code == "INPUT_INVALID"
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    "text",
    [
        "1.0000000000000000000000000000001",  # a digit beyond the default 28 digits
        "0.0000000000000000000000000000001",
        "999999999999.99000000000000000000000000000001",
        "1e-999999999999999999",
    ],
)
def test_a_decimal_beyond_the_default_precision_is_refused_not_rounded(text: str) -> None:
    with pytest.raises(CardsvcError) as refused:
        units.fen(Decimal(text), "medfee_sumamt")
    assert refused.value.code == "AMOUNT_INVALID"
    assert "decimals" in refused.value.message


@pytest.mark.parametrize(
    ("text", "fen"),
    [
        ("1.00000000000000000000000000000000000000000000000000", 100),  # zeros only
        ("999999999999.99", 99_999_999_999_999),
        ("-0.01", -1),
        ("0E-999999999999", 0),
        ("0.1e1", 100),
    ],
)
def test_exact_figures_are_converted(text: str, fen: int) -> None:
    assert units.fen(Decimal(text), "x") == fen


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("3", 3), ("3.000", 3), ("3e2", 300), ("999999999999", 999_999_999_999)],
)
def test_whole_counts(text: str, expected: int) -> None:
    assert units.whole(Decimal(text), "fixmedins_setl_cnt") == expected


@pytest.mark.parametrize("text", ["-1", "1.5", "NaN", "Infinity", "-0.5", "1e12", "1e5000"])
def test_whole_refusals(text: str) -> None:
    with pytest.raises(CardsvcError) as refused:
        units.whole(Decimal(text), "fixmedins_setl_cnt")
    assert refused.value.code == "INPUT_INVALID"
    assert "whole number from 0 to 999999999999" in refused.value.message


@pytest.mark.parametrize(
    "raw",
    [
        b'{"fixmedins_setl_cnt": 1' + b"0" * 5000 + b"}",  # past any integer JSON decodes
        b'{"medfee_sumamt": 1e99999999999999999999}',  # past any Decimal exponent
        b'[{"cnt": -1e99999999999999999999}]',
    ],
)
def test_a_number_no_figure_can_hold_is_input_invalid(raw: bytes) -> None:
    with pytest.raises(CardsvcError) as refused:
        envelope.normalise({"data": msgspec.Raw(raw)})
    assert refused.value.code == "INPUT_INVALID"
