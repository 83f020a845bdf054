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
