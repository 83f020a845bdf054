"""Faults injected for real while settlements flow at a steady rate: worker crashes, a
crash of the whole service, a database restart, the HSM down and back, a lock that stalls
the database, and a graceful shutdown. After each: nothing acknowledged is lost, nothing
is settled twice (retries with the same keys get the original), and the ledger proves.
The figures of each run are printed (``-s``) and summarised in docs/reliability.md."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import asyncpg
import pytest
import pytest_asyncio

from tests.support.api import Patient, Service, authenticate_card, lines, patient
from tests.support.stack import Stack
from tests.support.traffic import Traffic

pytestmark = pytest.mark.asyncio(loop_scope="session")

RATE = 40.0  # settlements a second offered during each fault


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def crowd(stack_service: Service) -> list[Patient]:
    facility = await stack_service.facility()
    counter = await stack_service.terminal("counter")
    pos = await stack_service.terminal("pos", facility["fixmedins_code"])
    return [await patient(stack_service, pos, counter, balance=10_000_000) for _ in range(12)]


def _report(name: str, traffic: Traffic, figures: dict[str, int]) -> None:
    print(
        f"\n[{name}] offered {len(traffic.attempts)}; first answers {traffic.summary()}; "
        f"after retries {figures}"
    )


async def test_a_killed_worker_loses_nothing(stack: Stack, stack_service: Service, crowd):
    traffic = Traffic(crowd)
    await traffic.prepare(int(RATE * 4.0))  # card tokens before the fault
    run = asyncio.create_task(traffic.run(RATE, 4.0))
    await asyncio.sleep(1.5)
    os.kill(min(stack.worker_pids()), signal.SIGKILL)
    await run
    await traffic.retry_unanswered()
    figures = await traffic.check(stack_service)
    _report("kill -9 one worker", traffic, figures)
    assert figures["acknowledged"] == figures["requests"]


async def test_killing_the_whole_service_loses_nothing(stack: Stack, stack_service: Service, crowd):
    traffic = Traffic(crowd)
    await traffic.prepare(int(RATE * 3.0))  # card tokens before the fault
    run = asyncio.create_task(traffic.run(RATE, 3.0))
    await asyncio.sleep(1.0)
    stack.kill_all()
    await run
    stack.start_service()
    await traffic.retry_unanswered()
    figures = await traffic.check(stack_service)
    _report("kill -9 every process", traffic, figures)
    assert figures["acknowledged"] == figures["requests"]


async def test_database_restart_fails_fast_and_recovers(
    stack: Stack, stack_service: Service, crowd
):
    traffic = Traffic(crowd)
    await traffic.prepare(int(RATE * 5.0))  # card tokens before the fault
    run = asyncio.create_task(traffic.run(RATE, 5.0))
    await asyncio.sleep(1.0)
    await asyncio.to_thread(stack.cluster.stop, "fast")
    await asyncio.sleep(1.5)
    await asyncio.to_thread(stack.cluster.start)
    await run
    assert "unhandled_error" not in stack.log_text(), [
        line[:3000] for line in stack.log_text().splitlines() if "unhandled_error" in line
    ][:1]
    down = [a for a in traffic.attempts if a.status == 503]
    assert down, "no request met the outage"
    assert {a.code for a in down} <= {"DATABASE_UNAVAILABLE", "DATABASE_TIMEOUT", "REQUEST_TIMEOUT"}
    assert max(a.elapsed for a in down) < 3.5  # bounded by the request time limit
    # The service came back by itself: no restart.
    async with stack_service.http.get(stack.base_url + "/readyz") as resp:
        assert resp.status == 200
    await traffic.retry_unanswered()
    figures = await traffic.check(stack_service)
    _report("database restart", traffic, figures)
    assert figures["acknowledged"] == figures["requests"]


async def test_hsm_down_stops_card_auth_not_settlement(stack: Stack, stack_service: Service, crowd):
    pos = crowd[0].terminal
    traffic = Traffic(crowd)
    await traffic.prepare(int(RATE * 2.0))  # one token per settlement, while the HSM is up
    stack.hsm.stop()
    try:
        started = time.monotonic()
        resp = await pos.request(
            "POST",
            "/v1/card-auth/challenge",
            {"card_no": crowd[0].card.card_no, "purpose": "transaction"},
        )
        challenge = resp.body
        verify = await pos.request(
            "POST",
            "/v1/card-auth/verify",
            {
                "auth_id": challenge["auth_id"],
                "card_sn": crowd[0].card.card_sn,
                "cryptogram": crowd[0].card.card.internal_authenticate(1, bytes(16)).hex(),
            },
        )
        assert verify.status == 503 and verify.body["error"]["code"] == "HSM_UNAVAILABLE"
        assert time.monotonic() - started < 2.0
        await traffic.run(RATE, 2.0)  # settlements with tokens from before go on
        figures = await traffic.check(stack_service)
        _report("hsm down", traffic, figures)
        assert figures["acknowledged"] == figures["requests"]
    finally:
        stack.hsm.restart()
    deadline = time.monotonic() + 10
    while True:
        try:
            await authenticate_card(pos, crowd[0].card, "transaction")
            break
        except Exception:
            assert time.monotonic() < deadline, "card-auth did not recover"
            await asyncio.sleep(0.2)


async def test_a_stalled_database_times_out_without_pile_up(
    stack: Stack, stack_service: Service, crowd
):
    victim, others = crowd[0], crowd[1:]
    blocker = await asyncpg.connect(stack.database_url)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(
            "SELECT 1 FROM psn_accounts WHERE psn_no = $1 FOR UPDATE", victim.psn_no
        )
        stalled = Traffic([victim])
        healthy = Traffic(others)
        await stalled.prepare(40)
        await healthy.prepare(40)
        await asyncio.gather(stalled.run(20, 2.0), healthy.run(20, 2.0))
        assert {a.code for a in stalled.attempts} <= {"DATABASE_TIMEOUT", "REQUEST_TIMEOUT"}
        assert all(a.status == 503 for a in stalled.attempts)
        assert max(a.elapsed for a in stalled.attempts) < 3.5
        assert all(a.setl_id for a in healthy.attempts), healthy.summary()
        await tx.rollback()
    finally:
        await blocker.close()
    # Nothing outlives the fault: the victim settles at once again.
    started = time.monotonic()
    done = await victim.settle("310", "11", lines(("A-AMOX", 1000, 1)))
    assert done["setl_id"] and time.monotonic() - started < 1.0
    await stalled.retry_unanswered()
    figures = await stalled.check(stack_service)
    _report("stalled database (lock held)", stalled, figures)


async def test_graceful_shutdown_drains_in_flight_requests(
    stack: Stack, stack_service: Service, crowd
):
    traffic = Traffic(crowd)
    await traffic.prepare(int(RATE * 3.0))  # card tokens before the fault
    run = asyncio.create_task(traffic.run(RATE, 3.0))
    await asyncio.sleep(1.0)
    code = await asyncio.to_thread(stack.stop_service, signal.SIGTERM)
    assert code == 0
    await run
    answered = [a for a in traffic.attempts if a.status is not None]
    assert all(a.status == 200 for a in answered), traffic.summary()  # none cut off mid-way
    stack.start_service()
    await traffic.retry_unanswered()
    figures = await traffic.check(stack_service)
    _report("SIGTERM", traffic, figures)
    assert figures["acknowledged"] == figures["requests"]
