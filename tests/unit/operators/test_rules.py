"""The pure rules of operators: passwords, sign-in throttling, credential shapes."""

from __future__ import annotations

import datetime as dt

import pytest

from cardsvc.operators import credentials, passwords, throttle


@pytest.mark.parametrize(
    ("password", "login", "reason"),
    [
        ("a" * 11, "x", "at least 12"),
        ("Ab1!" * 33, "x", "at most 128"),
        ("tab\tinside password", "x", "control characters"),
        ("zhang.wei-2026-spring", "zhang.wei", "the login"),
        ("ZHANG.WEI-2026-spring", "zhang.wei", "the login"),
        ("qwertyuiop12", "x", "commonly used"),
        ("Password2024!!", "x", "common word"),
        ("!!Welcome123456", "x", "common word"),
        ("2024-2025-2026", "x", "common word"),
        ("aaaaBBBBaaaa", "x", "too few different"),
    ],
)
def test_a_weak_password_is_refused_with_its_reason(password, login, reason):
    found = passwords.weakness(password, login)
    assert found is not None and reason in found


@pytest.mark.parametrize(
    "password",
    [
        "correct horse battery staple",
        "柜台的密码很长很长很长的",
        "Tr0ub4dor&3-river-lamp",
        "x" * 6 + "abcdefg",
    ],
)
def test_a_good_password_passes(password):
    assert passwords.weakness(password, "zhang.wei") is None


def test_argon2id_hash_verifies_only_its_password():
    stored = passwords.hash_password("correct horse battery staple")
    assert stored.startswith("$argon2id$")
    assert passwords.verify_password(stored, "correct horse battery staple")
    assert not passwords.verify_password(stored, "correct horse battery stapl")
    assert not passwords.verify_password("not a hash", "anything")
    assert not passwords.verify_password(passwords.DUMMY_HASH, "")


def test_lock_doubles_after_the_free_failures_up_to_a_ceiling():
    free = throttle.FREE_PER_LOGIN
    assert [throttle.lock_after(n, free) for n in range(free + 1)] == [None] * (free + 1)
    assert throttle.lock_after(free + 1, free) == dt.timedelta(seconds=1)
    assert throttle.lock_after(free + 2, free) == dt.timedelta(seconds=2)
    assert throttle.lock_after(free + 4, free) == dt.timedelta(seconds=8)
    assert throttle.lock_after(free + 100, free) == throttle.MAX_LOCK


def test_credentials_shapes_and_digests():
    token, secret = credentials.new_token(), credentials.new_secret()
    assert token.startswith("cso_") and credentials.looks_like_secret(token)
    assert credentials.looks_like_secret(secret) and not credentials.looks_like_secret("cso_x")
    assert len(credentials.digest(token)) == 32 and credentials.digest(token) != token.encode()
    assert credentials.csrf_token(secret) != secret
    assert credentials.csrf_token(secret) == credentials.csrf_token(secret)
    assert credentials.new_operator_id().startswith("OP")


def test_an_ipv6_client_is_throttled_by_its_slash_64():
    # Every address of one /64 is one guesser: it chooses its interface identifier freely.
    assert throttle.address_key("2001:db8:1:2::1") == throttle.address_key("2001:db8:1:2:ffff::9")
    assert throttle.address_key("2001:db8:1:2::1") == "addr:2001:db8:1:2::/64"
    assert throttle.address_key("2001:db8:1:3::1") != throttle.address_key("2001:db8:1:2::1")
    # IPv4, also when mapped into IPv6, keeps its whole address.
    assert throttle.address_key("192.0.2.7") == "addr:192.0.2.7"
    assert throttle.address_key("::ffff:192.0.2.7") == "addr:192.0.2.7"
    assert throttle.address_key("192.0.2.7") != throttle.address_key("192.0.2.8")
    assert throttle.address_key("unknown") == "addr:unknown"


def test_a_password_is_the_same_in_every_unicode_form():
    # Typed on one system as one code point, on another as e + a combining accent.
    composed, decomposed = "caf\u00e9 au lait tous les matins", "cafe\u0301 au lait tous les matins"
    assert passwords.verify_password(passwords.hash_password(composed), decomposed)
    assert passwords.verify_password(passwords.hash_password(decomposed), composed)
    # Full-width digits and letters (a Chinese input method) are the ASCII ones.
    assert passwords.verify_password(
        passwords.hash_password("ｍｙ　ｐａｓｓｐｈｒａｓｅ　２０２６"), "my passphrase 2026"
    )
    # The rules judge the normalised password: full-width "password" is still the word.
    assert passwords.weakness("ｐａｓｓｗｏｒｄ２０２４！", "someone") is not None
    assert "common word" in (passwords.weakness("ｐａｓｓｗｏｒｄ２０２４！！", "someone") or "")
