"""Card tokens: short-lived proof that a card authenticated at one terminal session. Pure.

A token is ``base64url(claims) "." base64url(HMAC-SHA256(key, claims)[:16])``: checked in
process with no database round trip. It is bound to the terminal session that did the card
authentication (and names that terminal's facility, for the national gateway's
``busi_card_info``) and is a bearer secret: never log it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Literal

import msgspec

Purpose = Literal["identify", "transaction"]


class CardTokenClaims(msgspec.Struct, frozen=True, array_like=True):
    card_no: str
    psn_no: str
    session_id: str
    purpose: Purpose
    expires_at: int  # unix seconds
    auth_id: str  # the card authentication that issued it: one settlement per transaction token
    # The facility of the terminal that authenticated the card ("" for a counter or kiosk,
    # and in tokens issued before the field existed): a national gateway client of that
    # facility may present the token (``busi_card_info``). Last, with a default, so that
    # older tokens still decode.
    fixmedins_code: str = ""


class InvalidCardToken(Exception):
    """Malformed, forged or expired; the message says which."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CardTokenClaims)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:16]


def issue(key: bytes, claims: CardTokenClaims) -> str:
    payload = _encoder.encode(claims)
    return f"{_b64(payload)}.{_b64(_mac(key, payload))}"


def verify(key: bytes, token: str, now: float) -> CardTokenClaims:
    try:
        payload_text, mac_text = token.split(".")
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except ValueError:
        raise InvalidCardToken("card token is malformed") from None
    if not hmac.compare_digest(mac, _mac(key, payload)):
        raise InvalidCardToken("card token signature is not valid")
    try:
        claims = _decoder.decode(payload)
    except msgspec.MsgspecError:
        raise InvalidCardToken("card token is malformed") from None
    if claims.expires_at <= now:
        raise InvalidCardToken("card token expired")
    return claims
