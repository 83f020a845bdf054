"""Each fault module gets a whole system of its own (tests/support/stack.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import pytest_asyncio

from tests.support.api import POLICY_CATALOG, Service
from tests.support.operators import create_operator
from tests.support.stack import Stack


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # A generous per-terminal allowance: the traffic comes from few terminals.
    system = Stack(
        workers=2,
        env={
            "CARDSVC_TERMINAL_RATE": "2000",
            "CARDSVC_TERMINAL_BURST": "2000",
            "CARDSVC_DB_COMMAND_TIMEOUT": "1.0",
            "CARDSVC_REQUEST_TIMEOUT": "3.0",
            "CARDSVC_HSM_TIMEOUT": "0.5",
        },
    ).start()
    try:
        yield system
    finally:
        system.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack_service(stack: Stack) -> AsyncIterator[Service]:
    async with aiohttp.ClientSession() as http:
        token = (await create_operator(stack.database_url)).token
        service = Service(stack.base_url, token, http, stack.database_url, stack.admin_token)
        await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})
        yield service
