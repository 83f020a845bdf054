"""Command APDU parsing (ISO 7816-4 cases 1–4, short and extended), pure.

A malformed APDU raises ``MalformedApdu``; the card answers it with ``6700``.
"""

from __future__ import annotations

import msgspec


class MalformedApdu(ValueError):
    """The bytes are not a command APDU of any case."""


class Command(msgspec.Struct, frozen=True):
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None  # bytes expected; 256 (short) or 65536 (extended) for a zero Le


def _short_le(byte: int) -> int:
    return byte or 256


def _extended_le(two: bytes) -> int:
    return int.from_bytes(two, "big") or 65536


def _command(header: bytes, data: bytes = b"", le: int | None = None) -> Command:
    cla, ins, p1, p2 = header
    return Command(cla, ins, p1, p2, data, le)


def parse(raw: bytes) -> Command:
    if len(raw) < 4:
        raise MalformedApdu("an APDU has at least a 4-byte header")
    header, body = raw[:4], raw[4:]
    if not body:
        return _command(header)
    if body[0] != 0:
        return _parse_short(header, body)
    return _parse_extended(header, body)


def _parse_short(header: bytes, body: bytes) -> Command:
    if len(body) == 1:
        return _command(header, le=_short_le(body[0]))
    lc = body[0]
    if len(body) == 1 + lc:
        return _command(header, data=body[1:])
    if len(body) == 2 + lc:
        return _command(header, data=body[1:-1], le=_short_le(body[-1]))
    raise MalformedApdu("Lc does not match the data")


def _parse_extended(header: bytes, body: bytes) -> Command:
    if len(body) == 1:  # a single zero byte: short case 2 with Le 256
        return _command(header, le=256)
    if len(body) == 3:
        return _command(header, le=_extended_le(body[1:3]))
    if len(body) < 3:
        raise MalformedApdu("truncated extended length")
    lc = int.from_bytes(body[1:3], "big")
    if lc == 0:
        raise MalformedApdu("extended Lc of zero")
    if len(body) == 3 + lc:
        return _command(header, data=body[3:])
    if len(body) == 5 + lc:
        return _command(header, data=body[3:-2], le=_extended_le(body[-2:]))
    raise MalformedApdu("extended Lc does not match the data")
