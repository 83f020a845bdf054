"""No captured request replays after a database crash (issue #11, item 9).

A crash empties the UNLOGGED tables (nonces, challenges); a clean restart does not. This
module runs its own PostgreSQL cluster and cardsvc (the session's cluster is shared), stops
the cluster with ``-m immediate``, starts it again and replays captured requests byte for
byte: a card's cancel-loss, and a settlement under a new Idempotency-Key (the key is not
signed). A sign-in challenge issued before the crash does not complete after it."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import msgspec
import pytest
import pytest_asyncio
from aiohttp import web

from cardcrypto import profile
from cardsvc import db
from cardsvc.app import create_app
from cardsvc.config import Settings
from cardsvc.devenv.pgcluster import LocalCluster
from cardsvc.terminal_sdk.client import Response
from tests.conftest import free_port
from tests.support.api import (
    POLICY_CATALOG,
    Service,
    authenticate_card,
    issue_card,
    lines,
    patient,
    unique_code,
)
from tests.support.operators import create_operator

pytestmark = pytest.mark.asyncio(loop_scope="session")

_encoder = msgspec.json.Encoder()


@dataclass
class System:
    cluster: LocalCluster
    service: Service


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def system(settings: Settings) -> AsyncIterator[System]:
    base = Path(tempfile.mkdtemp(prefix="cardsvc-crash-"))
    base.chmod(0o755)  # the cluster may run as the postgres user
    # Durable: a crash must lose no acknowledged commit, only the UNLOGGED tables.
    cluster = LocalCluster(base / "data", free_port(), durable=True)
    runner: web.AppRunner | None = None
    try:
        await asyncio.to_thread(cluster.ensure)
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(cluster.create_database, "cardsvc")
        await db.migrate_url(cluster.url("cardsvc"))
        own = msgspec.structs.replace(
            settings, database_url=cluster.url("cardsvc"), port=free_port()
        )
        runner = web.AppRunner(create_app(own))
        await runner.setup()
        await web.TCPSite(runner, own.host, own.port).start()
        async with aiohttp.ClientSession() as http:
            base_url = f"http://{own.host}:{own.port}"
            token = (await create_operator(own.database_url)).token
            service = Service(base_url, token, http, own.database_url, own.admin_token)
            await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})
            yield System(cluster, service)
    finally:
        if runner is not None:
            await runner.cleanup()
        await asyncio.to_thread(cluster.stop, "immediate")
        shutil.rmtree(base, ignore_errors=True)


async def _restart(cluster: LocalCluster, mode: str) -> None:
    await asyncio.to_thread(cluster.stop, mode)
    await asyncio.to_thread(cluster.start)


async def _once_up(send: Callable[[], Awaitable[Response]], within: float = 30.0) -> Response:
    """The first answer that is not a 503 (the pool's connections died with the server)."""
    deadline = time.monotonic() + within
    while True:
        resp = await send()
        if resp.status != 503 or time.monotonic() > deadline:
            return resp
        await asyncio.sleep(0.2)


async def _card_status(service: Service, card_no: str) -> str:
    conn = await asyncpg.connect(service.database_url)
    try:
        return str(await conn.fetchval("SELECT status FROM cards WHERE card_no = $1", card_no))
    finally:
        await conn.close()


async def _balance(service: Service, psn_no: str) -> int:
    conn = await asyncpg.connect(service.database_url)
    try:
        return int(
            await conn.fetchval("SELECT balance FROM psn_accounts WHERE psn_no = $1", psn_no)
        )
    finally:
        await conn.close()


def _code(resp: Response) -> str:
    return str(resp.body["error"]["code"]) if isinstance(resp.body, dict) else ""


async def test_no_captured_request_replays_after_a_database_crash(system: System):
    service = system.service
    counter = await service.terminal("counter")
    person = await service.person()
    card = await issue_card(counter, person["psn_no"])
    loss, cancel = f"/v1/cards/{card.card_no}/report-loss", f"/v1/cards/{card.card_no}/cancel-loss"

    # The card is reported lost, found (a cancel-loss the attacker captures), lost again.
    await counter.call("POST", loss)
    captured_cancel = counter.signed_headers("POST", cancel, b"")
    assert (await counter.send("POST", cancel, b"", captured_cancel)).status == 200
    await counter.call("POST", loss)
    assert await _card_status(service, card.card_no) == "loss_reported"

    # A settlement the attacker captures, to replay under another Idempotency-Key.
    facility = await service.facility()
    pos = await service.terminal("pos", facility["fixmedins_code"])
    p = await patient(service, pos, counter, balance=100_000)
    settle_body = _encoder.encode(
        {
            "card_token": p.token,
            "insutype": "310",
            "med_type": "11",
            "mdtrt_id": unique_code("MD"),
            "feedetail": lines(("A-AMOX", 1000, 1)),
        }
    )
    captured_settle = pos.signed_headers("POST", "/v1/settlements", settle_body)
    first = await pos.send(
        "POST", "/v1/settlements", settle_body, {**captured_settle, "Idempotency-Key": "IK-FIRST-1"}
    )
    assert first.status == 200, first.body
    balance = await _balance(service, p.psn_no)
    assert balance == 99_000

    # A sign-in started before the crash.
    other = await service.terminal("counter")
    started = await other.send(
        "POST", "/v1/terminals/sign-in", _encoder.encode({"terminal_id": other.terminal_id})
    )
    assert started.status == 200

    await _restart(system.cluster, "immediate")

    # The captured cancel-loss, byte for byte: refused, the card stays reported lost.
    replay = await _once_up(lambda: counter.send("POST", cancel, b"", captured_cancel))
    assert replay.status == 401 and _code(replay) == "SESSION_ENDED", replay.body
    assert replay.body["error"]["details"] == {"reason": "database_restart"}
    assert await _card_status(service, card.card_no) == "loss_reported"

    # The captured settlement under a new key: refused, nothing paid twice.
    replay = await _once_up(
        lambda: pos.send(
            "POST",
            "/v1/settlements",
            settle_body,
            {**captured_settle, "Idempotency-Key": "IK-REPLAY-2"},
        )
    )
    assert replay.status == 401 and _code(replay) == "SESSION_ENDED", replay.body
    assert await _balance(service, p.psn_no) == balance

    # A challenge issued before the crash cannot be completed after it.
    rs, rt = bytes.fromhex(started.body["challenge"]), bytes(16)
    complete = {
        "terminal_id": other.terminal_id,
        "challenge": rs.hex(),
        "terminal_random": rt.hex(),
        "cryptogram": profile.terminal_cryptogram(other.terminal_key, rs, rt).hex(),
    }
    completed = await _once_up(
        lambda: other.send("POST", "/v1/terminals/sign-in/complete", _encoder.encode(complete))
    )
    assert completed.status == 401 and _code(completed) == "CHALLENGE_INVALID"

    # A request signed afresh on the old session is refused too; the SDK signs in again
    # by itself, and the new session works.
    old_session = counter.session_id
    fresh = await counter.send("POST", cancel, b"", counter.signed_headers("POST", cancel, b""))
    assert fresh.status == 401 and _code(fresh) == "SESSION_ENDED"
    resp = await counter.request("POST", cancel)
    assert resp.status == 200 and counter.session_id != old_session, resp.body
    assert await _card_status(service, card.card_no) == "active"

    # After the crash nonces are recorded again: this request cannot be replayed either.
    headers = counter.signed_headers("POST", loss, b"")
    assert (await counter.send("POST", loss, b"", headers)).status == 200
    again = await counter.send("POST", loss, b"", headers)
    assert again.status == 401 and _code(again) == "NONCE_REPLAYED"

    # The settling terminal signs in again and settles with a new card authentication.
    await pos.sign_in()
    token = (await authenticate_card(pos, p.card, "transaction"))["card_token"]
    body = msgspec.json.decode(settle_body)
    body.update(card_token=token, mdtrt_id=unique_code("MD"))
    settled = await pos.request("POST", "/v1/settlements", body, {"Idempotency-Key": "IK-AFTER-3"})
    assert settled.status == 200, settled.body


async def test_a_clean_restart_ends_no_session_and_keeps_the_nonces(system: System):
    service = system.service
    counter = await service.terminal("counter")
    person = await service.person()
    card = await issue_card(counter, person["psn_no"])
    loss = f"/v1/cards/{card.card_no}/report-loss"
    headers = counter.signed_headers("POST", loss, b"")
    assert (await counter.send("POST", loss, b"", headers)).status == 200

    await _restart(system.cluster, "fast")

    again = await _once_up(lambda: counter.send("POST", loss, b"", headers))
    assert again.status == 401 and _code(again) == "NONCE_REPLAYED", again.body
    session = counter.session_id
    resp = await counter.request("POST", f"/v1/cards/{card.card_no}/cancel-loss")
    assert resp.status == 200 and counter.session_id == session, resp.body
