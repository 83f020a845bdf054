"""The interface's units, exactly: yuan with 2 decimals, ``pric`` with 6, ``cnt`` with 4.

Each arrives as a JSON number or a string and is decoded straight into ``Decimal`` (msgspec
reads a JSON number's text, never a binary float); it leaves as a JSON number
(``ENCODER``). Inside cardsvc money is integer fen, a price is integer 10^-4 fen and a count
integer 10^-4 units: ``fen``, ``price_e4`` and ``count_e4`` convert, refusing a value with
more decimals than its unit allows (``AMOUNT_INVALID``).
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from cardsvc.errors import InvalidRequest

# Decimal fields of input structs are plain ``Decimal`` (a number or a string); their bound
# is checked here, far above any sane figure (the policy's own limits refuse sooner) and far
# inside bigint, so no product of two of them overflows.
_MAX_MAGNITUDE = Decimal(10) ** 12

ENCODER = msgspec.json.Encoder(decimal_format="number")


def _scaled(value: Decimal, places: int, field: str) -> int:
    if not value.is_finite():
        raise InvalidRequest(f"{field} is not a number", code="AMOUNT_INVALID")
    if abs(value) >= _MAX_MAGNITUDE:
        raise InvalidRequest(f"{field} {value} is out of range", code="AMOUNT_INVALID")
    scaled = value.scaleb(places)
    if scaled != scaled.to_integral_value():
        raise InvalidRequest(
            f"{field} {value} has more than {places} decimals", code="AMOUNT_INVALID"
        )
    return int(scaled)


def fen(value: Decimal, field: str) -> int:
    """Yuan (at most 2 decimals) → fen."""
    return _scaled(value, 2, field)


def price_e4(value: Decimal, field: str = "pric") -> int:
    """A price in yuan (at most 6 decimals) → 10^-4 fen."""
    return _scaled(value, 6, field)


def count_e4(value: Decimal, field: str = "cnt") -> int:
    """A count (at most 4 decimals) → 10^-4 units."""
    return _scaled(value, 4, field)


def yuan(fen_: int) -> Decimal:
    """Fen → yuan with exactly 2 decimals (a JSON number through ``ENCODER``)."""
    return Decimal(fen_).scaleb(-2)


def price_yuan(e4: int) -> Decimal:
    return Decimal(e4).scaleb(-6)


def count(e4: int) -> Decimal:
    return Decimal(e4).scaleb(-4)
