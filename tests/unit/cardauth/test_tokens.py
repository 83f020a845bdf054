from __future__ import annotations

import pytest

from cardsvc.cardauth.tokens import CardTokenClaims, InvalidCardToken, issue, verify

KEY = bytes(range(32))
CLAIMS = CardTokenClaims("A00000001", "3202000000000001", "s" * 32, "transaction", 1_000, "a" * 32)


def test_round_trip():
    assert verify(KEY, issue(KEY, CLAIMS), now=999) == CLAIMS


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("", "malformed"),
        ("abc", "malformed"),
        ("a.b.c", "malformed"),
        (issue(bytes(32), CLAIMS), "signature"),
        (issue(KEY, CLAIMS)[:-2] + "AA", "signature"),
    ],
)
def test_forged_or_malformed(token: str, why: str):
    with pytest.raises(InvalidCardToken, match=why):
        verify(KEY, token, now=0)


def test_expired():
    with pytest.raises(InvalidCardToken, match="expired"):
        verify(KEY, issue(KEY, CLAIMS), now=1_000)


def test_claims_cannot_be_swapped_between_tokens():
    other = issue(
        KEY, CardTokenClaims("A00000002", "3202000000000002", "t" * 32, "identify", 9, "b" * 32)
    )
    payload, _ = issue(KEY, CLAIMS).split(".")
    _, mac = other.split(".")
    with pytest.raises(InvalidCardToken, match="signature"):
        verify(KEY, f"{payload}.{mac}", now=0)


def test_a_token_issued_before_the_facility_claim_still_decodes():
    import msgspec

    from cardsvc.cardauth.tokens import _b64, _mac

    old = ["A00000001", "3202000000000001", "s" * 32, "transaction", 1_000, "a" * 32]
    payload = msgspec.msgpack.encode(old)
    claims = verify(KEY, f"{_b64(payload)}.{_b64(_mac(KEY, payload))}", now=0)
    assert claims.card_no == "A00000001" and claims.fixmedins_code == ""


def test_the_facility_claim_round_trips():
    claims = CardTokenClaims(
        "A00000001", "3202000000000001", "s" * 32, "identify", 1_000, "a" * 32, "H1"
    )
    assert verify(KEY, issue(KEY, claims), now=0).fixmedins_code == "H1"
