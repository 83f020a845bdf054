"""Card tokens presented by a national gateway client, and the card certificate's form."""

from __future__ import annotations

import time

import pytest

from cardsvc.cardauth import tokens
from cardsvc.cardauth.services import TOKEN_KEY_LABEL, CardTokens
from cardsvc.config import Settings
from cardsvc.errors import CardsvcError
from cardsvc.national.certs import split_card_cert
from cardsvc.privacy import derive_key
from cardsvc.web.caller import Caller

SETTINGS = Settings(admin_token="a" * 16, data_key=bytes(range(32)))
KEY = derive_key(SETTINGS.data_key, TOKEN_KEY_LABEL)
GATEWAY = Caller(kind="gateway", fixmedins_code="H1", gateway_client="P1")
SESSION = "s" * 32


def _token(fixmedins_code: str, purpose: tokens.Purpose = "identify") -> str:
    claims = tokens.CardTokenClaims(
        "A00000001",
        "3202000000000001",
        SESSION,
        purpose,
        int(time.time()) + 60,
        "a" * 32,
        fixmedins_code,
    )
    return tokens.issue(KEY, claims)


def test_gateway_caller_is_named_by_its_client():
    assert GATEWAY.actor == "gateway:P1"
    assert GATEWAY.facility() == "H1"


def test_a_gateway_client_presents_a_token_of_its_own_facility():
    claims = CardTokens(SETTINGS).check(GATEWAY, _token("H1"), frozenset({"identify"}))
    assert claims.card_no == "A00000001"


@pytest.mark.parametrize("facility", ["H2", ""])
def test_a_token_of_another_facility_or_of_a_counter_is_refused(facility: str):
    with pytest.raises(CardsvcError) as exc:
        CardTokens(SETTINGS).check(GATEWAY, _token(facility), frozenset({"identify"}))
    assert exc.value.code == "CARD_TOKEN_INVALID"
    assert "another facility" in exc.value.message


def test_a_gateway_caller_without_a_facility_is_refused():
    caller = Caller(kind="gateway", gateway_client="P1")
    with pytest.raises(CardsvcError) as exc:
        CardTokens(SETTINGS).check(caller, _token(""), frozenset({"identify"}))
    assert exc.value.code == "CARD_TOKEN_INVALID"


def test_a_terminal_still_needs_its_own_session():
    checker = CardTokens(SETTINGS)
    own = Caller(kind="pos", terminal_id="T1", session_id=SESSION, fixmedins_code="H1")
    assert checker.check(own, _token("H1"), frozenset({"identify"})).psn_no
    other = Caller(kind="pos", terminal_id="T2", session_id="t" * 32, fixmedins_code="H1")
    with pytest.raises(CardsvcError, match="another terminal session"):
        checker.check(other, _token("H1"), frozenset({"identify"}))


def test_purpose_still_applies_to_a_gateway_client():
    with pytest.raises(CardsvcError) as exc:
        CardTokens(SETTINGS).check(GATEWAY, _token("H1"), frozenset({"transaction"}))
    assert exc.value.code == "CARD_TOKEN_PURPOSE"


@pytest.mark.parametrize(
    ("cert", "expected"),
    [
        ("A00000001|tok.en", ("A00000001", "tok.en")),
        ("A00000001", None),
        ("A00000001|", None),
        ("|tok", None),
        ("A0000001|tok", None),
        ("A00000001|a|b", None),
        ("A000000０1|tok", None),
    ],
)
def test_card_certificate_form(cert: str, expected: tuple[str, str] | None):
    if expected is None:
        with pytest.raises(CardsvcError) as exc:
            split_card_cert(cert)
        assert exc.value.code == "INPUT_INVALID"
    else:
        assert split_card_cert(cert) == expected
