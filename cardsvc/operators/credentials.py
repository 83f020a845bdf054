"""Random secrets of sessions and API tokens, and what is stored of them (pure).

Only SHA-256 digests are stored: the secrets have 256 bits, so no slow hash is needed
for a database reader not to be able to replay them. A session's CSRF token is derived
from its secret, so a reader of the table cannot compute it either."""

from __future__ import annotations

import base64
import hashlib
import secrets

TOKEN_PREFIX = "cso_"  # noqa: S105 - a public prefix; "cardsvc operator": recognisable by secret scanners and in logs
_SECRET_BYTES = 32


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def new_secret() -> str:
    return _b64(secrets.token_bytes(_SECRET_BYTES))


def new_token() -> str:
    return TOKEN_PREFIX + new_secret()


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def csrf_token(session_secret: str) -> str:
    return _b64(hashlib.sha256(b"cardsvc csrf\0" + session_secret.encode()).digest())


def new_operator_id() -> str:
    return "OP" + secrets.token_hex(5).upper()


def new_token_id() -> str:
    return "OT" + secrets.token_hex(5).upper()


def looks_like_secret(value: str) -> bool:
    """A credential of the right shape (43 url-safe base64 characters after any prefix);
    anything else is refused without a database round trip."""
    body = value.removeprefix(TOKEN_PREFIX)
    return len(body) == 43 and all(c.isalnum() or c in "-_" for c in body) and body.isascii()
