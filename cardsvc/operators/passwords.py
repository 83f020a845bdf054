"""Password rules (pure) and argon2id hashing.

The rules are the few that matter against guessing (NIST SP 800-63B): long enough, not the
login, not a well-known password; no composition rules. Each refusal says why, in words an
operator can act on. Hashing is argon2id with argon2-cffi's defaults (RFC 9106's second
recommended profile: 64 MiB, 3 passes): tens of milliseconds of one core, so the service
runs it in a worker thread (``cardsvc.operators.services``), never on the event loop.
"""

from __future__ import annotations

import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 12
MAX_LENGTH = 128

# Words that lead every list of leaked passwords; a password that is one of them with
# digits or punctuation around it (Password2024!, 123456qwerty) is refused.
_COMMON_WORDS = frozenset(
    """
    password passw0rd passwort motdepasse qwerty qwertz azerty asdf asdfgh zxcvbn
    qwertyuiop asdfghjkl zxcvbnm admin administrator root login welcome letmein
    iloveyou monkey dragon master shadow sunshine princess football baseball superman
    trustno changeme secret default abc abcdef abcdefg abcdefgh test tester guest user
    cardsvc operator clerk reviewer auditor woaini
    """.split()
)
# Whole passwords of twelve characters or more seen most often in leaked lists.
_COMMON_PASSWORDS = frozenset(
    """
    123456789012 1234567890123 12345678901234 123123123123 111111111111 000000000000
    qwertyuiop12 qwertyuiop123 1q2w3e4r5t6y 1qaz2wsx3edc q1w2e3r4t5y6 zaq12wsxcde3
    passwordpassword iloveyouiloveyou abcdefghijkl abc123abc123 a1b2c3d4e5f6
    aaaaaaaaaaaa qazwsxedcrfv 147258369147 987654321098 5201314520131 woaini1314520
    """.split()
)
_DIGITS_AND_SYMBOLS = re.compile(r"[\W\d_]+")  # keeps letters of any script


def weakness(password: str, login: str) -> str | None:
    """Why ``password`` may not be used by ``login``, or ``None`` when it may."""
    if len(password) < MIN_LENGTH:
        return f"the password must be at least {MIN_LENGTH} characters long"
    if len(password) > MAX_LENGTH:
        return f"the password must be at most {MAX_LENGTH} characters long"
    if any(not ch.isprintable() for ch in password):
        return "the password must not contain control characters"
    lowered = password.lower()
    if login and login.lower() in lowered:
        return "the password must not contain the login"
    if lowered in _COMMON_PASSWORDS:
        return "the password is a commonly used one"
    letters = _DIGITS_AND_SYMBOLS.sub("", lowered)
    if not letters or letters in _COMMON_WORDS:
        return "the password is a common word or number pattern with digits or symbols around it"
    if len(set(lowered)) < 5:
        return "the password repeats too few different characters"
    return None


_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    """Whether ``password`` matches; a malformed stored hash never matches."""
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# Verified when the login is unknown, so that its answer takes as long as a wrong password.
DUMMY_HASH = hash_password("an unknown login is verified against this, never matching")
