from __future__ import annotations

import pytest

from cardcrypto import profile
from cardsvc.errors import Unauthenticated
from cardsvc.terminals import signing

KEY = bytes(range(32))


def _headers(**overrides: str) -> dict[str, str]:
    headers = {
        "X-Terminal-Id": "T00000001",
        "X-Session-Id": "s" * 32,
        "X-Timestamp": "1700000000",
        "X-Nonce": "n" * 16,
        "X-Signature": profile.request_signature(
            KEY, "POST", "/v1/x?a=1", "1700000000", "n" * 16, b"{}"
        ),
    }
    headers.update(overrides)
    return headers


def test_good_request_passes():
    signed = signing.parse_headers(_headers())
    signing.check_timestamp(signed.timestamp, 1700000300, 300)
    signing.check_signature(KEY, signed, "POST", "/v1/x?a=1", b"{}")


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        (_headers(**{"X-Nonce": ""}), "SIGNATURE_MISSING"),
        (_headers(**{"X-Nonce": "n" * 15}), "NONCE_INVALID"),
        (_headers(**{"X-Nonce": "n" * 65}), "NONCE_INVALID"),
        (_headers(**{"X-Nonce": "n" * 15 + "!"}), "NONCE_INVALID"),
        # aiohttp hands bytes that are not UTF-8 over as surrogates
        (_headers(**{"X-Session-Id": "\udcff\udcfe" + "s" * 30}), "SIGNATURE_HEADER_INVALID"),
        (_headers(**{"X-Signature": "\udcff" * 64}), "SIGNATURE_HEADER_INVALID"),
        (_headers(**{"X-Terminal-Id": "T0000000\u00e9"}), "SIGNATURE_HEADER_INVALID"),
        (_headers(**{"X-Timestamp": "\u0661\u0667\u0660\u0660"}), "SIGNATURE_HEADER_INVALID"),
        (_headers(**{"X-Terminal-Id": "T0000\x7f001"}), "SIGNATURE_HEADER_INVALID"),
    ],
)
def test_header_faults(headers: dict[str, str], code: str):
    with pytest.raises(Unauthenticated) as caught:
        signing.parse_headers(headers)
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("timestamp", "now", "code"),
    [
        ("abc", 0, "TIMESTAMP_INVALID"),
        ("1000", 1301, "TIMESTAMP_OUT_OF_WINDOW"),
        ("1301", 1000, "TIMESTAMP_OUT_OF_WINDOW"),
    ],
)
def test_timestamp_faults(timestamp: str, now: float, code: str):
    with pytest.raises(Unauthenticated) as caught:
        signing.check_timestamp(timestamp, now, 300)
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("method", "path_qs", "body"),
    [("GET", "/v1/x?a=1", b"{}"), ("POST", "/v1/x", b"{}"), ("POST", "/v1/x?a=1", b"{ }")],
)
def test_any_change_breaks_the_signature(method: str, path_qs: str, body: bytes):
    signed = signing.parse_headers(_headers())
    with pytest.raises(Unauthenticated) as caught:
        signing.check_signature(KEY, signed, method, path_qs, body)
    assert caught.value.code == "SIGNATURE_INVALID"
