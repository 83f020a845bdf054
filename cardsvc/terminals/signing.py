"""Checks of a signed terminal request that need no IO.

Headers ``X-Terminal-Id``, ``X-Session-Id``, ``X-Timestamp`` (unix seconds), ``X-Nonce``
(16–64 chars of ``[A-Za-z0-9_-]``) and ``X-Signature`` = hex HMAC-SHA256(session key,
canonical request) — see ``cardcrypto.profile.canonical_request``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from cardcrypto import profile
from cardsvc.errors import Unauthenticated

_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_HEADERS = ("X-Terminal-Id", "X-Session-Id", "X-Timestamp", "X-Nonce", "X-Signature")


class SignedHeaders(msgspec.Struct, frozen=True, kw_only=True):
    terminal_id: str
    session_id: str
    timestamp: str
    nonce: str
    signature: str


def parse_headers(headers: Mapping[str, str]) -> SignedHeaders:
    missing = [h for h in _HEADERS if not headers.get(h)]
    if missing:
        raise Unauthenticated(
            "signed request headers missing", code="SIGNATURE_MISSING", details={"missing": missing}
        )
    # aiohttp hands over bytes that are not UTF-8 as surrogates; none of these headers may
    # hold anything but printable ASCII.
    garbled = [h for h in _HEADERS if not (headers[h].isascii() and headers[h].isprintable())]
    if garbled:
        raise Unauthenticated(
            "signed request headers must be printable ASCII",
            code="SIGNATURE_HEADER_INVALID",
            details={"headers": garbled},
        )
    if not _NONCE.match(headers["X-Nonce"]):
        raise Unauthenticated("X-Nonce must be 16-64 of [A-Za-z0-9_-]", code="NONCE_INVALID")
    return SignedHeaders(
        terminal_id=headers["X-Terminal-Id"],
        session_id=headers["X-Session-Id"],
        timestamp=headers["X-Timestamp"],
        nonce=headers["X-Nonce"],
        signature=headers["X-Signature"],
    )


def check_timestamp(timestamp: str, now: float, window: int) -> None:
    try:
        sent = int(timestamp)
    except ValueError:
        raise Unauthenticated(
            "X-Timestamp must be unix seconds", code="TIMESTAMP_INVALID"
        ) from None
    if abs(now - sent) > window:
        raise Unauthenticated(
            f"X-Timestamp is more than {window} s off the service clock",
            code="TIMESTAMP_OUT_OF_WINDOW",
        )


def check_signature(
    session_key: bytes, signed: SignedHeaders, method: str, path_qs: str, body: bytes
) -> None:
    try:
        expected = profile.request_signature(
            session_key, method, path_qs, signed.timestamp, signed.nonce, body
        )
    except ValueError:  # a field the canonical form cannot hold
        expected = ""
    if not expected or not profile.signatures_equal(expected, signed.signature.lower()):
        raise Unauthenticated("request signature does not match", code="SIGNATURE_INVALID")
