"""The SDK's pure parts: the profile's APDUs byte for byte (docs/protocol.md, card profile), status
words turned into exceptions, records decoded into the national reader line."""

from __future__ import annotations

import argparse

import pytest

from cardsvc.terminal_sdk import cardprofile as cp
from cardsvc.terminal_sdk import flows
from cardsvc.terminal_sdk.__main__ import parse_item
from cardsvc.terminal_sdk.reader import (
    CardDataError,
    CardStatusError,
    ConditionsNotSatisfied,
    PinBlocked,
    SecurityNotSatisfied,
    WrongPin,
    card_info,
    national_line,
    status_error,
)

R = bytes(range(16))


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (cp.select_ssse(), "00A404000F7378312E73682EC9E7BBE1B1A3D5CF"),
        (cp.select_file(cp.EF05), "00A4020002EF05"),
        (cp.select_file(cp.EF06), "00A4020002EF06"),
        (cp.read_record(0x07), "00B2070000"),
        (cp.get_challenge(), "0084000008"),
        (cp.internal_authenticate(2, R), "0088000210" + R.hex() + "00"),
        (cp.verify("123456"), "0020000003123456"),
        (cp.verify_status(), "00200000"),
        (cp.write_record(0x06, 0x0A, b"1"), "80DC0A060131"),
        (cp.put_key(1, bytes(16), b"\1\2\3"), "80D8000113" + "00" * 16 + "010203"),
        (cp.set_pin("654321"), "8024000003654321"),
        (cp.lock(), "80F00000"),
        (cp.get_lifecycle(), "80CA000001"),
    ],
)
def test_profile_apdus(built: bytes, expected: str):
    assert built == bytes.fromhex(expected)


@pytest.mark.parametrize("pin", ["12345", "1234567", "12345a", "１２３４５６", ""])
def test_a_pin_is_six_ascii_digits(pin: str):
    with pytest.raises(ValueError, match="6 digits"):
        cp.pin_to_bcd(pin)


def test_bcd_pin_decoding():
    assert cp.bcd_to_pin(bytes.fromhex("012345")) == "012345"
    assert cp.bcd_to_pin(bytes.fromhex("01234F")) is None
    assert cp.bcd_to_pin(bytes.fromhex("0123")) is None


@pytest.mark.parametrize(
    ("sw", "kind", "text"),
    [
        (0x63C2, WrongPin, "wrong PIN, 2 tries left"),
        (0x6983, PinBlocked, "PIN blocked"),
        (0x6982, SecurityNotSatisfied, "VERIFY the PIN first"),
        (0x6985, ConditionsNotSatisfied, "conditions of use"),
        (0x6A83, CardStatusError, "record not found"),
        (0x6C12, CardStatusError, "18 bytes available"),
        (0x6123, CardStatusError, "unknown status word"),
    ],
)
def test_status_words_become_named_errors(sw: int, kind: type, text: str):
    error = status_error(sw, "VERIFY")
    assert type(error) is kind and error.sw == sw
    assert text in str(error) and f"{sw:04X}" in str(error)


def test_wrong_pin_says_how_many_tries_are_left():
    error = status_error(0x63C1, "VERIFY")
    assert isinstance(error, WrongPin) and error.tries_left == 1


def test_tlv():
    assert cp.tlv(0x0B, b"CHN") == bytes.fromhex("0B03") + b"CHN"
    assert cp.parse_tlv(0x0B, bytes.fromhex("0B03") + b"CHN") == b"CHN"
    for bad in (b"", bytes.fromhex("0C03") + b"CHN", bytes.fromhex("0B04") + b"CHN"):
        with pytest.raises(ValueError):
            cp.parse_tlv(0x0B, bad)


RECORDS = {
    cp.EF05: {
        0x01: bytes.fromhex("320200" + "ab" * 13),
        0x02: b"3",
        0x03: b"3.00",
        0x04: b"320200",
        0x05: bytes.fromhex("20261125"),
        0x06: bytes.fromhex("20361125"),
        0x07: b"A00000042",
    },
    cp.EF06: {
        0x08: b"11010519491231002X",
        0x09: "王五".encode("gbk").ljust(30),
        0x0A: b"2",
        0x0B: b"CHN",
        0x0D: bytes.fromhex("19491231"),
    },
}


def test_records_decode_into_the_national_line():
    info = card_info(bytes.fromhex("3b8801"), RECORDS)
    assert info.name == "王五" and info.masked_certno == "11**************2X"
    assert national_line(info, "T-9", "Virtual PCD 00 00") == (
        "320200|11010519491231002X|A00000042|320200" + "AB" * 13 + "|王五|3B8801|3.00|"
        "20261125|20361125|T-9|Virtual PCD 00 00|"
    )


def test_a_record_that_is_not_text_is_a_data_error():
    broken = {**RECORDS, cp.EF06: {**RECORDS[cp.EF06], 0x09: b"\xff" * 30}}
    with pytest.raises(CardDataError):
        card_info(b"", broken)


def test_visit_order_leaves_out_what_is_not_given():
    order = flows.VisitOrder(feedetail=[flows.FeeLine("A", 100, 2)], mdtrt_id="MD1")
    assert order.request("tok") == {
        "card_token": "tok",
        "feedetail": [{"code": "A", "unit_price": 100, "quantity": 2}],
        "insutype": "310",
        "med_type": "11",
        "mdtrt_id": "MD1",
        "acct_used_flag": True,
    }


@pytest.mark.parametrize(
    ("text", "line"),
    [("A-AMOX:12.00x2", ("A-AMOX", 1200, 2)), ("C-VIT:5", ("C-VIT", 500, 1))],
)
def test_items_on_the_command_line(text: str, line: tuple[str, int, int]):
    assert parse_item(text) == flows.FeeLine(*line)


@pytest.mark.parametrize("text", ["A-AMOX", "A-AMOX:12.001", "A-AMOX:1200x", ":100"])
def test_bad_items_on_the_command_line(text: str):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_item(text)
