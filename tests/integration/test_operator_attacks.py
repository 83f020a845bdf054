"""Attacks on operator authentication, each against the real service and PostgreSQL: a
burst of password guesses sent at once, removing the last administrator (which would
reopen the bootstrap token), a sign-in forged by another site's page, and passwords typed
in another Unicode form."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import msgspec
import pytest
import pytest_asyncio
from aiohttp import web

from cardsvc import db
from cardsvc.app import create_app
from cardsvc.config import Settings
from cardsvc.devenv.pgcluster import LocalCluster
from tests.conftest import free_port
from tests.integration.test_operators import _code, _forget_failures, _request, _sign_in
from tests.support.api import Service
from tests.support.operators import PASSWORD, create_operator

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_burst_of_guesses_sent_at_once_is_throttled_like_a_sequence(service: Service):
    victim = await create_operator(service.database_url, ("clerk",))
    try:
        answers = await asyncio.gather(
            *(_sign_in(service, victim.login, f"guess number {i:04d}") for i in range(15))
        )
        statuses = sorted(status for status, _, _ in answers)
        # 5 free failures, the sixth locks the login: the other guesses are never tried,
        # however many were already waiting for the password hasher.
        assert statuses.count(401) <= 6, statuses
        assert statuses.count(429) >= 9, statuses
        await _forget_failures(service)
        # Attempts are counted before the password is tried; a success gives its attempt
        # back, so an office signing in all day from one address is never locked.
        operator = await create_operator(service.database_url, ("auditor",))
        for _ in range(25):  # more than an address's 20 free failures
            assert (await _sign_in(service, operator.login, PASSWORD))[0] == 201
    finally:
        await _forget_failures(service)
