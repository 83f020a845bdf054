"""Health, readiness, metrics, HSM outage and recovery, audit tamper evidence, and the
OpenAPI document kept true to the routes."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from cardsvc.config import Settings
from tests.support.api import Service, authenticate_card, issue_card
from tests.support.hsm import HsmProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]


async def test_health_ready_and_metrics(service: Service):
    async with service.http.get(service.base_url + "/healthz") as resp:
        assert resp.status == 200 and (await resp.json()) == {"status": "ok"}
    async with service.http.get(service.base_url + "/readyz") as resp:
        assert resp.status == 200
        assert await resp.json() == {
            "status": "ok",
            "database": True,
            "hsm": True,
            "degraded": [],
        }
    async with service.http.get(service.base_url + "/metrics") as resp:
        text = await resp.text()
        assert resp.status == 200
        assert 'cardsvc_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    async with service.http.get(service.base_url + "/v1/nothing-here") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "NOT_FOUND"


async def test_hsm_outage_gives_503_fast_and_recovers(service: Service, hsm: HsmProcess):
    person = await service.person()
    counter = await service.terminal("counter")
    card = await issue_card(counter, person["psn_no"])
    hsm.stop()
    try:
        started = time.monotonic()
        resp = await counter.request(
            "POST", "/v1/cards", {"psn_no": (await service.person())["psn_no"]}
        )
        assert resp.status == 503 and resp.body["error"]["code"] == "HSM_UNAVAILABLE"
        assert time.monotonic() - started < 3.0
        async with service.http.get(service.base_url + "/readyz") as ready:
            # Still ready: settlement needs no HSM; the HSM is reported, not drained for.
            body = await ready.json()
            assert ready.status == 200 and body["hsm"] is False and body["degraded"] == ["hsm"]
        # Requests that need no HSM go on.
        got = await counter.call("GET", f"/v1/cards/{card.card_no}")
        assert got["status"] == "active"
    finally:
        hsm.restart()
    deadline = time.monotonic() + 10
    while True:
        try:
            result = await authenticate_card(counter, card, "identify")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    assert result["card_no"] == card.card_no


async def test_audit_chain_detects_tampering(service: Service, hsm: HsmProcess, settings: Settings):
    facility = await service.facility()
    verdict = await service.admin_ok("GET", "/v1/audit/verify")
    assert verdict["ok"] is True and verdict["entries"] > 0 and verdict["first_bad"] is None
    conn = await asyncpg.connect(service.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT chain, seq, data FROM audit_log WHERE object_type = 'facility'"
            " AND object_id = $1 AND action = 'facility.created'",
            facility["fixmedins_code"],
        )
        forged = row["data"].replace('"A"', '"B"')
        await conn.execute(
            "UPDATE audit_log SET data = $3 WHERE chain = $1 AND seq = $2",
            row["chain"],
            row["seq"],
            forged,
        )
        try:
            verdict = await service.admin_ok("GET", "/v1/audit/verify")
            assert verdict["ok"] is False
            assert verdict["first_bad"]["chain"] == row["chain"]
            assert verdict["first_bad"]["seq"] == row["seq"]
            cli = subprocess.run(
                [sys.executable, "-m", "cardsvc", "verify-audit"],
                env={
                    "DATABASE_URL": service.database_url,
                    "CARDSVC_ADMIN_TOKEN": "x" * 16,
                    "CARDSVC_DATA_KEY": "00" * 32,
                    # Verification checks the anchors' MACs: it needs the HSM.
                    **hsm.cardsvc_env(),
                    "CARDSVC_AUDIT_ANCHOR_DIR": settings.audit_anchor_dir,
                    "PATH": "/usr/bin:/bin",
                },
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=False,
            )
            assert cli.returncode == 1, cli.stderr
            assert f'"seq": {row["seq"]}' in cli.stdout
        finally:
            await conn.execute(
                "UPDATE audit_log SET data = $3 WHERE chain = $1 AND seq = $2",
                row["chain"],
                row["seq"],
                row["data"],
            )
        # A deleted tail is caught by the chain head.
        last = await conn.fetchrow(
            "SELECT * FROM audit_log WHERE chain = $1 ORDER BY seq DESC LIMIT 1", row["chain"]
        )
        await conn.execute(
            "DELETE FROM audit_log WHERE chain = $1 AND seq = $2", last["chain"], last["seq"]
        )
        try:
            verdict = await service.admin_ok("GET", "/v1/audit/verify")
            assert verdict["ok"] is False and verdict["first_bad"]["seq"] == last["seq"]
        finally:
            await conn.execute(
                "INSERT INTO audit_log (chain, seq, at, actor, action, object_type, object_id,"
                " data, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                *[
                    last[k]
                    for k in (
                        "chain",
                        "seq",
                        "at",
                        "actor",
                        "action",
                        "object_type",
                        "object_id",
                        "data",
                        "prev_hash",
                        "hash",
                    )
                ],
            )
    finally:
        await conn.close()
    assert (await service.admin_ok("GET", "/v1/audit/verify"))["ok"] is True


async def test_garbage_collections_are_counted_with_their_pauses(service: Service) -> None:
    async def full_collections() -> float:
        async with service.http.get(service.base_url + "/metrics") as resp:
            text = await resp.text()
        return sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith('cardsvc_gc_pause_seconds_count{generation="2"}')
        )

    before = await full_collections()
    gc.collect()
    assert await full_collections() == before + 1
