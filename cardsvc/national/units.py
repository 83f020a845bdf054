"""The interface's units, exactly: yuan with 2 decimals, ``pric`` with 6, ``cnt`` with 4.

Each arrives as a JSON number or a string and is decoded straight into ``Decimal`` (msgspec
reads a JSON number's text, never a binary float); it leaves as a JSON number
(``ENCODER``). Inside cardsvc money is integer fen, a price is integer 10^-4 fen and a count
integer 10^-4 units: ``fen``, ``price_e4`` and ``count_e4`` convert, refusing a value with
more decimals than its unit allows or of 10^12 or more (``AMOUNT_INVALID``); ``whole``
converts a count (``INPUT_INVALID``). Each bounds the value before it becomes an integer.
"""

from __future__ import annotations

from decimal import Context, Decimal, Inexact

import msgspec

from cardsvc.errors import InvalidRequest

# Decimal fields of input structs are plain ``Decimal`` (a number or a string, of any size:
# ``1e999999`` is a short text). Their bound is checked before anything turns one into an
# integer (an int of a million digits costs seconds of CPU): far above any sane figure (the
# policy's own limits refuse sooner) and far inside bigint, so no product of two overflows.
_MAX_MAGNITUDE = Decimal(10) ** 12
# Scaling is exact: a digit the default context (28 digits) would round away is refused
# (Inexact), never dropped. Anything below the bound with at most 6 decimals fits in 18.
_EXACT = Context(prec=40, traps=[Inexact])
_SHOWN = 24  # characters of a refused value a message repeats

ENCODER = msgspec.json.Encoder(decimal_format="number")


def _shown(value: Decimal) -> str:
    text = str(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def _scaled(value: Decimal, places: int, field: str, code: str = "AMOUNT_INVALID") -> int:
    if not value.is_finite():
        raise InvalidRequest(f"{field} is not a number", code=code)
    if value.copy_abs() >= _MAX_MAGNITUDE:  # exact, whatever the exponent; no int made
        raise InvalidRequest(f"{field} {_shown(value)} is out of range", code=code)
    try:
        scaled = value.scaleb(places, context=_EXACT)
    except Inexact:
        scaled = None
    if scaled is None or scaled != scaled.to_integral_value():
        raise InvalidRequest(f"{field} {_shown(value)} has more than {places} decimals", code=code)
    return int(scaled)


def whole(value: Decimal, field: str) -> int:
    """A count given as a number or a string holding a whole number, 0 or more and below
    10^12 (``INPUT_INVALID`` otherwise)."""
    refusal = InvalidRequest(
        f"{field} must be a whole number from 0 to {_MAX_MAGNITUDE - 1}", code="INPUT_INVALID"
    )
    if not value.is_finite() or value < 0:
        raise refusal
    try:
        return _scaled(value, 0, field, "INPUT_INVALID")
    except InvalidRequest:
        raise refusal from None


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
