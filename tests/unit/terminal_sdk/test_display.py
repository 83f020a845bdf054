"""Money and times as a terminal shows and takes them: exact yuan, business time."""

from __future__ import annotations

import argparse
import datetime as dt

import pytest

from cardsvc.money import parse_yuan, yuan
from cardsvc.terminal_sdk.__main__ import parse_item
from cardsvc.terminal_sdk.display import local_time
from cardsvc.terminal_sdk.flows import FeeLine


@pytest.mark.parametrize(
    ("fen", "shown"),
    [
        (0, "¥0.00"),
        (5, "¥0.05"),
        (1200, "¥12.00"),
        (123456789, "¥1,234,567.89"),
        (-1050, "-¥10.50"),
    ],
)
def test_yuan_is_exact(fen: int, shown: str):
    assert yuan(fen) == shown


@pytest.mark.parametrize(
    ("text", "fen"),
    [
        ("12", 1200),
        ("12.0", 1200),
        ("12.5", 1250),
        ("12.05", 1205),
        ("0.01", 1),
        ("0", 0),
        ("99999999999.99", 9_999_999_999_999),
        ("0.29", 29),
        ("1.13", 113),
    ],
)
def test_parse_yuan_is_exact(text: str, fen: int):
    assert parse_yuan(text) == fen


@pytest.mark.parametrize("text", ["", "12.", ".5", "12.001", "1e3", "-1", "12,00", "１２"])
def test_parse_yuan_refuses_what_is_not_an_amount(text: str):
    with pytest.raises(ValueError, match="yuan"):
        parse_yuan(text)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("A-AMOX:12.00x2", FeeLine(code="A-AMOX", unit_price=1200, quantity=2)),
        ("A-AMOX:12", FeeLine(code="A-AMOX", unit_price=1200, quantity=1)),
        ("C-VIT:5.5x3", FeeLine(code="C-VIT", unit_price=550, quantity=3)),
        ("B_1.x:0.29", FeeLine(code="B_1.x", unit_price=29, quantity=1)),
    ],
)
def test_item_takes_yuan(text: str, line: FeeLine):
    assert parse_item(text) == line


@pytest.mark.parametrize(
    "text",
    [
        "A-AMOX",
        "A-AMOX:",
        "A-AMOX:12.001",
        "A-AMOX:12x0",
        "A-AMOX:12x100001",
        "A AMOX:1",
        "A-AMOX:100000001",
        "A-AMOX:1.2.3",
    ],
)
def test_item_refuses_a_malformed_line(text: str):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_item(text)


@pytest.mark.parametrize(
    ("when", "shown"),
    [
        ("2026-03-01T17:30:00Z", "2026-03-02 01:30 +08:00"),  # the next business day
        ("2026-03-01T09:15:59.999+00:00", "2026-03-01 17:15 +08:00"),
        (dt.datetime(2026, 3, 1, 23, 0, tzinfo=dt.UTC), "2026-03-02 07:00 +08:00"),
        (0.0, "1970-01-01 08:00 +08:00"),
    ],
)
def test_times_are_shown_in_business_time_with_the_zone(when, shown: str):
    assert local_time(when) == shown


def test_a_time_without_a_zone_is_refused():
    with pytest.raises(ValueError, match="zone"):
        local_time("2026-03-01T17:30:00")
