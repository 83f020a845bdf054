"""The TIF gateway headers, checked without IO.

``x-tif-paasid`` (the gateway client), ``x-tif-timestamp`` (Unix seconds), ``x-tif-nonce``
(16-64 printable ASCII characters, no space) and ``x-tif-signature``: lowercase hex of
SHA-256(timestamp ‖ secret ‖ nonce ‖ timestamp). The signature does not cover the body:
the gateway is deployed behind TLS, and a nonce is accepted once.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from cardsvc.errors import Unauthenticated

PAASID, TIMESTAMP, NONCE, SIGNATURE = (
    "x-tif-paasid",
    "x-tif-timestamp",
    "x-tif-nonce",
    "x-tif-signature",
)
HEADERS = (PAASID, TIMESTAMP, NONCE, SIGNATURE)
NONCE_MIN, NONCE_MAX = 16, 64


@dataclass(frozen=True, slots=True)
class TifHeaders:
    paasid: str
    timestamp: str
    nonce: str
    signature: str


def _printable(value: str) -> bool:
    # aiohttp hands over bytes that are not UTF-8 as surrogates: never a valid header.
    return value.isascii() and value.isprintable()


def parse(headers: Mapping[str, str]) -> TifHeaders:
    """The four headers, present and printable ASCII, the nonce of the right form."""
    missing = [h for h in HEADERS if not headers.get(h)]
    if missing:
        raise Unauthenticated(
            f"gateway headers missing: {', '.join(missing)}",
            code="SIGNATURE_MISSING",
            details={"missing": missing},
        )
    garbled = [h for h in HEADERS if not _printable(headers[h])]
    if garbled:
        raise Unauthenticated(
            f"gateway headers must be printable ASCII: {', '.join(garbled)}",
            code="SIGNATURE_HEADER_INVALID",
        )
    nonce = headers[NONCE]
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX or " " in nonce:
        raise Unauthenticated(
            f"x-tif-nonce must be {NONCE_MIN}-{NONCE_MAX} characters without spaces",
            code="NONCE_INVALID",
        )
    return TifHeaders(
        paasid=headers[PAASID],
        timestamp=headers[TIMESTAMP],
        nonce=nonce,
        signature=headers[SIGNATURE],
    )


def check_timestamp(timestamp: str, now: float, window: int) -> None:
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise Unauthenticated("x-tif-timestamp must be Unix seconds", code="TIMESTAMP_INVALID")
    if abs(now - int(timestamp)) > window:
        raise Unauthenticated(
            f"x-tif-timestamp is more than {window} s off the service clock",
            code="TIMESTAMP_OUT_OF_WINDOW",
        )


def signature(timestamp: str, secret: str, nonce: str) -> str:
    """Lowercase hex SHA-256 of timestamp ‖ secret ‖ nonce ‖ timestamp."""
    return hashlib.sha256(f"{timestamp}{secret}{nonce}{timestamp}".encode()).hexdigest()


def check_signature(tif: TifHeaders, secret: str) -> None:
    expected = signature(tif.timestamp, secret, tif.nonce)
    if not hmac.compare_digest(expected.encode(), tif.signature.encode()):
        raise Unauthenticated(
            "x-tif-signature does not match (SHA-256 of timestamp, secret, nonce, timestamp,"
            " lowercase hex)",
            code="SIGNATURE_INVALID",
        )
