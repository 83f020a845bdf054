from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardsvc.vcard.apdu import Command, MalformedApdu, parse

PARSED = [
    ("case 1", "00A40400", Command(0x00, 0xA4, 0x04, 0x00)),
    ("case 2, Le 8", "0084000008", Command(0x00, 0x84, 0x00, 0x00, le=8)),
    ("case 2, Le 00 is 256", "00B2010000", Command(0x00, 0xB2, 0x01, 0x00, le=256)),
    ("case 3", "0020000003123456", Command(0x00, 0x20, 0, 0, bytes.fromhex("123456"))),
    ("case 4", "00880001021122" + "00", Command(0x00, 0x88, 0, 1, b"\x11\x22", 256)),
    ("case 2 extended", "00B20100000100", Command(0x00, 0xB2, 1, 0, le=256)),
    ("case 2 extended, 0000", "00B2010000" + "0000", Command(0x00, 0xB2, 1, 0, le=65536)),
    ("case 3 extended", "00DC0105000002AABB", Command(0x00, 0xDC, 1, 5, b"\xaa\xbb")),
    ("case 4 extended", "0088000100000211220010", Command(0, 0x88, 0, 1, b"\x11\x22", 16)),
]


@pytest.mark.parametrize(("raw", "expected"), [p[1:] for p in PARSED], ids=[p[0] for p in PARSED])
def test_parse(raw: str, expected: Command):
    assert parse(bytes.fromhex(raw)) == expected


MALFORMED = [
    ("empty", ""),
    ("3 bytes", "00A404"),
    ("Lc longer than data", "00A4040005AABB"),
    ("Lc shorter than data, no room for Le", "00A4040001AABBCC"),
    ("truncated extended length", "00B201000000"),
    ("extended Lc of zero with data", "00DC010500000011"),
    ("extended Lc does not match", "00DC0105000003AABB"),
]


@pytest.mark.parametrize("raw", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed(raw: str):
    with pytest.raises(MalformedApdu):
        parse(bytes.fromhex(raw))


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_malformed(raw: bytes):
    try:
        command = parse(raw)
    except MalformedApdu:
        return
    assert bytes([command.cla, command.ins, command.p1, command.p2]) == raw[:4]
