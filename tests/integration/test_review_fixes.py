"""Fixes of a hostile review of the issue #11 security work (see docs/security.md): races
and silent failures, each forced for real on PostgreSQL and hsm_stub."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

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
from cardsvc.services import Services
from cardsvc.terminal_sdk.client import TerminalClient
from cardsvc.web.appkeys import SERVICES
from tests.conftest import free_port
from tests.support.api import POLICY_CATALOG, Service, issue_card, lines, patient, unique_code
from tests.support.operators import create_operator

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


class _ChangesCardAfterItsStatement:
    """The service's pool, except that right after the statement that stores card
    challenges the card is reactivated (as a counter would, before the answer is made)."""

    def __init__(self, pool: Any, database_url: str, card_no: str) -> None:
        self._pool, self._url, self._card_no = pool, database_url, card_no

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        rows = await self._pool.fetch(query, *args, **kwargs)
        await self._after(query)
        return rows

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        row = await self._pool.fetchrow(query, *args, **kwargs)
        await self._after(query)
        return row

    async def _after(self, query: str) -> None:
        if "INSERT INTO card_auth_challenges" in query:
            conn = await asyncpg.connect(self._url)
            try:
                await conn.execute(
                    "UPDATE cards SET status = 'active' WHERE card_no = $1", self._card_no
                )
            finally:
                await conn.close()


async def test_a_card_changing_while_challenged_is_answered_from_the_storing_read(
    service: Service, own: Own, monkeypatch: pytest.MonkeyPatch
):
    """The refusal says why from the same statement that did not store the challenge (it
    used to read the card a second time, and answer 409 CARD_CHANGED when the two reads
    disagreed): a change right after it does not alter the answer."""
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
    hook = _ChangesCardAfterItsStatement(card_auth._pool, service.database_url, card.card_no)
    monkeypatch.setattr(card_auth, "_pool", hook)  # right after its statement
    resp = await terminal.request(
        "POST", "/v1/card-auth/challenge", {"card_no": card.card_no, "purpose": "transaction"}
    )
    monkeypatch.undo()
    assert resp.status == 422, resp.body
    assert resp.body["error"]["code"] == "CARD_NOT_ACTIVE"
    assert resp.body["error"]["details"] == {"status": "loss_reported"}
    conn = await asyncpg.connect(service.database_url)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM card_auth_challenges WHERE card_no = $1", card.card_no
        )
    finally:
        await conn.close()
    assert stored == 0
    again = await terminal.request(
        "POST", "/v1/card-auth/challenge", {"card_no": card.card_no, "purpose": "transaction"}
    )
    assert again.status == 200, again.body  # asking again meets the card's new state


# --- 3. the crash fence runs when the admission finds the marker gone -------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pooled(settings: Settings, pg_cluster: LocalCluster) -> AsyncIterator[Service]:
    """cardsvc on a database of its own (the test ends every session in it), its pool's
    connections kept across the simulated crash, as behind a connection pooler."""
    name = unique_code("fence_").lower()
    pg_cluster.create_database(name)
    await db.migrate_url(pg_cluster.url(name))
    mine = msgspec.structs.replace(settings, database_url=pg_cluster.url(name), port=free_port())
    runner = web.AppRunner(create_app(mine))
    await runner.setup()
    await web.TCPSite(runner, mine.host, mine.port).start()
    try:
        async with aiohttp.ClientSession() as http:
            base_url = f"http://{mine.host}:{mine.port}"
            token = (await create_operator(mine.database_url)).token
            service = Service(base_url, token, http, mine.database_url, mine.admin_token)
            await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})
            yield service
    finally:
        await runner.cleanup()


async def _once(client: TerminalClient, method: str, path: str, json: Any, **extra: str) -> Any:
    """One signed request on the client's current session (no sign-in again)."""
    body = msgspec.json.encode(json)
    return await client.send(
        method, path, body, {**extra, **client.signed_headers(method, path, body)}
    )


async def _crash(database_url: str) -> None:
    """What a crash does to the UNLOGGED marker, without touching the service's pool."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DELETE FROM crash_marker")
    finally:
        await conn.close()


async def _sessions(database_url: str, *terminal_ids: str) -> list[Any]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(
            await conn.fetch(
                "SELECT terminal_id, ended_reason FROM terminal_sessions"
                " WHERE terminal_id = ANY($1::text[]) ORDER BY terminal_id",
                list(terminal_ids),
            )
        )
    finally:
        await conn.close()


async def test_a_crash_behind_a_pooler_is_fenced_by_the_next_admission(pooled: Service):
    counter, other = await pooled.terminal("counter"), await pooled.terminal("kiosk")
    challenge = {"card_no": "A00000000", "purpose": "identify"}
    before = await _once(counter, "POST", "/v1/card-auth/challenge", challenge)
    assert before.status == 404, before.body  # admitted: the card is unknown
    await _crash(pooled.database_url)

    after = await _once(counter, "POST", "/v1/card-auth/challenge", challenge)
    assert after.status == 401, after.body
    assert after.body["error"]["code"] == "SESSION_ENDED"
    assert after.body["error"]["details"] == {"reason": "database_restart"}
    # The fence ran: every session open before the crash ended, the marker is back.
    ended = await _sessions(pooled.database_url, counter.terminal_id, other.terminal_id)
    assert [r["ended_reason"] for r in ended] == ["database_restart"] * 2
    conn = await asyncpg.connect(pooled.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM crash_marker") == 1
    finally:
        await conn.close()
    kiosk = await _once(other, "POST", "/v1/card-auth/challenge", challenge)
    assert kiosk.status == 401 and kiosk.body["error"]["code"] == "SESSION_ENDED"
    await counter.sign_in()  # a new session is admitted
    assert (await _once(counter, "POST", "/v1/card-auth/challenge", challenge)).status == 404


async def test_a_settlement_after_a_crash_behind_a_pooler_runs_the_fence(pooled: Service):
    facility = await pooled.facility(level="3")
    hospital = await pooled.terminal("pos", facility["fixmedins_code"])
    counter = await pooled.terminal("counter")
    person = await patient(pooled, hospital, counter, balance=100000)
    await _crash(pooled.database_url)

    body = {
        "card_token": person.token,
        "insutype": "310",
        "med_type": "11",
        "mdtrt_id": unique_code("MD"),
        "feedetail": lines(("A-AMOX", 5000, 1)),
    }
    key = unique_code("IK")
    resp = await _once(hospital, "POST", "/v1/settlements", body, **{"Idempotency-Key": key})
    assert resp.status == 401, resp.body
    assert resp.body["error"]["code"] == "SESSION_ENDED"
    ended = await _sessions(pooled.database_url, hospital.terminal_id)
    assert [r["ended_reason"] for r in ended] == ["database_restart"]
    assert (await pooled.admin_ok("GET", f"/v1/persons/{person.psn_no}"))["balc"] == 100000
