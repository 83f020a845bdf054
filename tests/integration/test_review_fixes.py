"""Fixes of a hostile review of the issue #11 security work (see docs/security.md): races
and silent failures, each forced for real on PostgreSQL and hsm_stub."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest
import pytest_asyncio
from aiohttp import web

from cardsvc.app import create_app
from cardsvc.config import Settings
from cardsvc.services import Services
from cardsvc.terminal_sdk.client import TerminalClient
from cardsvc.web.appkeys import SERVICES
from tests.conftest import free_port
from tests.support.api import Service, issue_card

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Own:
    """A second cardsvc on the session's database and HSM, whose services a test may
    reach into (to run something between two of its statements)."""

    def __init__(self, base_url: str, services: Services) -> None:
        self.base_url, self.services = base_url, services


@pytest_asyncio.fixture(loop_scope="session")
async def own(settings: Settings) -> AsyncIterator[Own]:
    mine = msgspec.structs.replace(settings, port=free_port())
    app = create_app(mine)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, mine.host, mine.port).start()
    try:
        yield Own(f"http://{mine.host}:{mine.port}", app[SERVICES])
    finally:
        await runner.cleanup()


async def _terminal(service: Service, base_url: str, kind: str) -> TerminalClient:
    reg = await service.admin_ok("POST", "/v1/terminals", {"kind": kind})
    client = TerminalClient(
        service.http, base_url, reg["terminal_id"], bytes.fromhex(reg["terminal_key"])
    )
    await client.sign_in()
    return client


# --- 7. a card whose status changes while it is challenged ------------------------------


class _ChangesCardAfterFirstRead:
    """The service's pool, except that right after the conditional insert of a card
    challenge the card is reactivated (as a counter would, between the two statements)."""

    def __init__(self, pool: Any, database_url: str, card_no: str) -> None:
        self._pool, self._url, self._card_no = pool, database_url, card_no

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        value = await self._pool.fetchval(query, *args, **kwargs)
        if "INSERT INTO card_auth_challenges" in query:
            conn = await asyncpg.connect(self._url)
            try:
                await conn.execute(
                    "UPDATE cards SET status = 'active' WHERE card_no = $1", self._card_no
                )
            finally:
                await conn.close()
        return value


async def test_a_card_changing_while_challenged_is_a_retryable_conflict(
    service: Service, own: Own, monkeypatch: pytest.MonkeyPatch
):
    counter = await service.terminal("counter")
    person = await service.person()
    card = await issue_card(counter, person["psn_no"])
    conn = await asyncpg.connect(service.database_url)
    try:
        await conn.execute(
            "UPDATE cards SET status = 'loss_reported' WHERE card_no = $1", card.card_no
        )
    finally:
        await conn.close()
    terminal = await _terminal(service, own.base_url, "counter")
    card_auth = own.services.card_auth
    hook = _ChangesCardAfterFirstRead(card_auth._pool, service.database_url, card.card_no)
    monkeypatch.setattr(card_auth, "_pool", hook)  # between its two statements
    resp = await terminal.request(
        "POST", "/v1/card-auth/challenge", {"card_no": card.card_no, "purpose": "transaction"}
    )
    monkeypatch.undo()
    assert resp.status == 409, resp.body
    assert resp.body["error"]["code"] == "CARD_CHANGED"
    again = await terminal.request(
        "POST", "/v1/card-auth/challenge", {"card_no": card.card_no, "purpose": "transaction"}
    )
    assert again.status == 200, again.body  # asking again meets the card's new state
