"""Operators for tests, written straight into the database (as `python -m cardsvc
create-operator` would), so that every test stack, fresh or restarted, has an operator
token without going through the one-time bootstrap."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import asyncpg

from cardsvc.operators import credentials, passwords
from cardsvc.operators.models import ROLES

PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class TestOperator:
    __test__ = False  # not a test class

    operator_id: str
    login: str
    display_name: str
    roles: tuple[str, ...]
    token: str
    password: str = PASSWORD


_HASH = passwords.hash_password(PASSWORD)  # once: argon2id takes its time on purpose


async def create_operator(
    database_url: str, roles: tuple[str, ...] = ROLES, *, name: str = "测试操作员"
) -> TestOperator:
    """An active operator holding ``roles``, with a live API token."""
    operator_id, token = credentials.new_operator_id(), credentials.new_token()
    login = "t-" + secrets.token_hex(6)
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO operators (operator_id, login, display_name, roles, password_hash)"
                " VALUES ($1, $2, $3, $4, $5)",
                operator_id,
                login,
                name,
                list(roles),
                _HASH,
            )
            await conn.execute(
                "INSERT INTO operator_tokens (token_id, operator_id, name, token_hash, expires_at)"
                " VALUES ($1, $2, 'tests', $3, now() + interval '30 days')",
                credentials.new_token_id(),
                operator_id,
                credentials.digest(token),
            )
    finally:
        await conn.close()
    return TestOperator(operator_id, login, name, tuple(roles), token)
