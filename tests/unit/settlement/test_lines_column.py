"""The settlements' ``lines`` column: a native line is stored as it always was, a decimal
line with its exact price and count."""

from __future__ import annotations

import msgspec

from cardsvc.settlement.policy import DecimalLine, FeeLine, settle
from cardsvc.settlement.store import lines_column
from tests.unit.settlement import PARAMS, request, snapshot

# The keys each element has had since the lines moved into the settlements row.
NATIVE_KEYS = [
    "line_no",
    "code",
    "chrgitm_lv",
    "unit_price",
    "quantity",
    "total",
    "overlmt_selfpay",
    "fulamt_ownpay_amt",
    "preselfpay_amt",
    "inscp_scp_amt",
]


def test_a_native_line_is_stored_as_before_and_a_decimal_line_exactly() -> None:
    native = FeeLine(code="B-CEF", unit_price=2500, quantity=4)
    decimal = DecimalLine(code="B-CEF", price_e4=25_001_000, count_e4=5_000, total=1250)
    lines = (native, decimal)
    req = msgspec.structs.replace(request("310", "21"), lines=lines)
    split = settle(PARAMS, snapshot("310"), req)
    first, second = lines_column(split, lines)
    assert list(first) == NATIVE_KEYS
    assert first == {
        "line_no": 1,
        "code": "B-CEF",
        "chrgitm_lv": "B",
        "unit_price": 2500,
        "quantity": 4,
        "total": 10000,
        "overlmt_selfpay": 2000,
        "fulamt_ownpay_amt": 0,
        "preselfpay_amt": 800,
        "inscp_scp_amt": 7200,
    }
    # 25.001 yuan x 0.5 = 1250.05 fen -> 1250; over r(500.1 x 0.5 = 250.05) = 250.
    assert second == {
        "line_no": 2,
        "code": "B-CEF",
        "chrgitm_lv": "B",
        "price_e4": 25_001_000,
        "count_e4": 5_000,
        "total": 1250,
        "overlmt_selfpay": 250,
        "fulamt_ownpay_amt": 0,
        "preselfpay_amt": 100,
        "inscp_scp_amt": 900,
    }
