"""What an operator sees: one scrape covers every worker, readiness with the HSM down, the
API description and its browser, and log lines that carry a refusal's code and a
settlement's id."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import msgspec
import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cardsvc.app import create_app
from cardsvc.config import Settings
from cardsvc.ops import metrics
from cardsvc.ops.services import Health, pool_waiting
from tests.conftest import free_port
from tests.support.api import POLICY_CATALOG, REGION, Service, lines, patient
from tests.support.hsm import HsmProcess, hsm_env

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus text exposition (None if absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


async def _get(url: str) -> tuple[int, bytes, aiohttp.typedefs.LooseHeaders]:
    # A new connection each time, so the kernel spreads requests over the workers.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async with http.get(url) as resp:
            return resp.status, await resp.read(), resp.headers


def _wait_ready(url: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("service did not become ready")


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_lines(self) -> list[dict]:
        found = []
        for raw in self.log.read_text().splitlines():
            try:
                found.append(json.loads(raw))
            except ValueError:
                continue
        return found


@pytest.fixture(scope="module")
def two_workers(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``python -m cardsvc serve`` with two workers, logging at info into a file."""
    port = free_port()
    log = tmp_path_factory.mktemp("two-workers") / "stdout.log"
    env = {
        **{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        "DATABASE_URL": settings.database_url,
        "CARDSVC_ADMIN_TOKEN": settings.admin_token,
        "CARDSVC_DATA_KEY": settings.data_key.hex(),
        **hsm_env(settings),
        "CARDSVC_PORT": str(port),
        "CARDSVC_WORKERS": "2",
        "CARDSVC_LOG_LEVEL": "info",
        "CARDSVC_AUDIT_ANCHOR_INTERVAL": "0",
        "CARDSVC_SIGN_IN_ADDRESS_BURST": "100000",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cardsvc", "serve"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = Served(f"http://127.0.0.1:{port}", proc, log)
    try:
        _wait_ready(served.url)
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _metrics_folder(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for entry in environ:
        if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return Path(entry.split(b"=", 1)[1].decode())
    raise AssertionError("the supervisor set no PROMETHEUS_MULTIPROC_DIR")


async def test_one_scrape_covers_every_worker(two_workers: Served):
    folder = _metrics_folder(two_workers.process.pid)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # private to the service's user
    _, before, _ = await _get(two_workers.url + "/metrics")
    start = (
        _sample(
            before.decode(),
            "cardsvc_http_requests_total",
            method="GET",
            route="/healthz",
            status="200",
        )
        or 0.0
    )
    for _ in range(40):
        assert (await _get(two_workers.url + "/healthz"))[0] == 200
    # Both workers served some of them: each has its own file of values.
    workers = {p.name.rsplit("_", 1)[1] for p in folder.glob("counter_*.db")}
    assert len(workers - {f"{two_workers.process.pid}.db"}) >= 2, workers
    # Every scrape, whichever worker answers it, counts all 40.
    for _ in range(6):
        _, body, _ = await _get(two_workers.url + "/metrics")
        text = body.decode()
        total = _sample(
            text, "cardsvc_http_requests_total", method="GET", route="/healthz", status="200"
        )
        assert total == start + 40, text
    for name in (
        "cardsvc_db_pool_connections_in_use",
        "cardsvc_db_pool_waiting",
        "cardsvc_event_loop_lag_seconds",
    ):
        assert _sample(text, name) is not None, name


async def test_log_lines_carry_the_refusal_code_and_the_settlement_id(
    two_workers: Served, service: Service
):
    status, _, _ = await _get(two_workers.url + "/docs/nothing-here")
    assert status == 404
    # A settlement through the two-worker service, by a terminal signed in on the same
    # database.
    await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})
    facility = await service.facility()
    pos = await service.terminal("pos", facility["fixmedins_code"])
    p = await patient(service, pos, await service.terminal("counter"), balance=10000)
    pos._base = two_workers.url  # the same signed-in terminal, talking to the other service
    refused = await pos.request("POST", "/v1/settlements", {"card_token": p.token})
    assert refused.status == 400
    code = refused.body["error"]["code"]
    settled = await p.settle("310", "11", lines(("A-AMOX", 1200, 2)))
    setl_id = settled["setl_id"]

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        requests = [e for e in two_workers.log_lines() if e.get("event") == "request"]
        refusal = [e for e in requests if e.get("error_code") == code]
        settlement = [e for e in requests if e.get("setl_id") == setl_id]
        if refusal and settlement:
            break
        await asyncio.sleep(0.1)
    assert refusal and refusal[0]["route"] == "/v1/settlements" and refusal[0]["status"] == 400
    assert settlement and settlement[0]["route"] == "/v1/settlements"
    assert any(e.get("error_code") == "NOT_FOUND" and e["status"] == 404 for e in requests)

    _, body, _ = await _get(two_workers.url + "/metrics")
    text = body.decode()
    assert (_sample(text, "cardsvc_settlements_total", outcome="settled", code="") or 0) >= 1
    assert _sample(text, "cardsvc_settlements_total", outcome="refused", code=code) == 1
    assert (_sample(text, "cardsvc_http_errors_total", status="400", code=code) or 0) >= 1
    # The HSM calls of the card authentication went through the session's service, but the
    # workers' monitors echo the HSM themselves.
    assert (_sample(text, "cardsvc_hsm_calls_total", command="ECHO", result="ok") or 0) >= 1
    assert _sample(text, "cardsvc_dependency_up", dependency="database") == 1.0


def _children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return {int(p) for p in out.stdout.split()}


async def test_a_dead_workers_gauges_go_and_its_counts_stay(two_workers: Served):
    folder = _metrics_folder(two_workers.process.pid)
    _, body, _ = await _get(two_workers.url + "/metrics")
    labels = {"method": "GET", "route": "/healthz", "status": "200"}
    before = _sample(body.decode(), "cardsvc_http_requests_total", **labels)
    assert before
    victim = min(_children(two_workers.process.pid))
    assert list(folder.glob(f"gauge_live*_{victim}.db"))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = _children(two_workers.process.pid)
        if len(now) == 2 and victim not in now:
            break
        await asyncio.sleep(0.1)
    _wait_ready(two_workers.url)
    assert not list(folder.glob(f"gauge_live*_{victim}.db"))  # mark_process_dead
    _, body, _ = await _get(two_workers.url + "/metrics")
    # The dead worker's requests are still counted (a counter never goes back).
    assert (_sample(body.decode(), "cardsvc_http_requests_total", **labels) or 0) >= before


async def test_the_metrics_folder_is_removed_on_stop(settings: Settings, two_workers: Served):
    folder = _metrics_folder(two_workers.process.pid)
    assert folder.is_dir()
    two_workers.process.send_signal(signal.SIGTERM)
    assert two_workers.process.wait(timeout=15) == 0
    assert not folder.exists()


# ---------------------------------------------------------------- one app, its own HSM


@pytest_asyncio.fixture(loop_scope="session")
async def own_hsm_service(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[str, HsmProcess]]:
    hsm = HsmProcess(keystore_dir=tmp_path_factory.mktemp("own-hsm"), regions=[REGION])
    hsm.start()
    own = msgspec.structs.replace(
        settings,
        port=free_port(),
        hsm_port=hsm.port,
        hsm_ca_file=str(hsm.credentials.ca_cert),
        hsm_cert_file=str(hsm.credentials.client_cert),
        hsm_key_file=str(hsm.credentials.client_key),
    )
    runner = web.AppRunner(create_app(own))
    await runner.setup()
    await web.TCPSite(runner, own.host, own.port).start()
    try:
        yield f"http://{own.host}:{own.port}", hsm
    finally:
        await runner.cleanup()
        hsm.stop()


async def test_ready_while_the_hsm_is_down_and_the_outage_is_reported(
    own_hsm_service: tuple[str, HsmProcess], service: Service
):
    url, hsm = own_hsm_service
    status, body, _ = await _get(url + "/readyz")
    assert status == 200 and json.loads(body) == {
        "status": "ok",
        "database": True,
        "hsm": True,
        "degraded": [],
    }
    hsm.stop()
    status, body, _ = await _get(url + "/readyz")
    assert status == 200, body
    assert json.loads(body) == {
        "status": "degraded",
        "database": True,
        "hsm": False,
        "degraded": ["hsm"],
    }
    _, metrics, _ = await _get(url + "/metrics")
    text = metrics.decode()
    assert _sample(text, "cardsvc_dependency_up", dependency="hsm") == 0.0
    assert _sample(text, "cardsvc_dependency_up", dependency="database") == 1.0
    assert (
        _sample(text, "cardsvc_hsm_calls_total", command="ECHO", result="unavailable") or 0
    ) >= 1
    hsm.restart()
    status, body, _ = await _get(url + "/readyz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert (
        _sample(
            (await _get(url + "/metrics"))[1].decode(), "cardsvc_dependency_up", dependency="hsm"
        )
        == 1.0
    )


# ---------------------------------------------------------------- the API description


async def test_the_api_description_is_served_as_the_file(service: Service):
    status, body, headers = await _get(service.base_url + "/openapi.yaml")
    assert status == 200 and headers["Content-Type"].startswith("application/yaml")
    assert body == (ROOT / "schema" / "openapi.yaml").read_bytes()


async def test_the_api_browser_loads_everything_from_the_service(service: Service):
    status, body, headers = await _get(service.base_url + "/docs")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    page = body.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(assets) >= 5
    for asset in assets:
        assert asset.startswith("/docs/"), asset  # from the service, never a CDN
        status, content, headers = await _get(service.base_url + asset)
        assert status == 200 and len(content) > 0, asset
    status, init, _ = await _get(service.base_url + "/docs/swagger-initializer.js")
    assert b'url: "/openapi.yaml"' in init
    for bad in ("/docs/..%2Fopenapi.yaml", "/docs/index.j2", "/docs/swagger-ui.js.map"):
        status, body, _ = await _get(service.base_url + bad)
        assert status == 404 and json.loads(body)["error"]["code"] == "NOT_FOUND", bad


async def test_the_api_browser_renders_in_a_headless_browser(service: Service, tmp_path: Path):
    """Chromium renders /docs: the DOM it ends with holds the API's title and operations,
    which only Swagger UI's scripts (served by cardsvc) can have put there."""
    assert shutil.which("chromium"), "needs Debian's chromium: apt-get install chromium"
    profile = tmp_path / "profile"
    result = await asyncio.to_thread(
        subprocess.run,
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            service.base_url + "/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    dom = result.stdout
    assert "cardsvc — social security card service API" in dom, result.stderr[-2000:]
    assert "/v1/settlements" in dom and "opblock" in dom
    shot = tmp_path / "docs.png"
    await asyncio.to_thread(
        subprocess.run,
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            service.base_url + "/docs",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert shot.exists() and shot.stat().st_size > 10_000


async def test_the_pool_gauges_count_connections_in_use_and_waiting(database_url: str):
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        health = Health(pool, None)  # the HSM is not asked here
        async with pool.acquire():
            waiter = asyncio.create_task(pool.fetchval("SELECT 1"))
            await asyncio.sleep(0.1)
            assert pool_waiting(pool) == 1
            health.sample_pool()
            text = generate_latest(metrics.REGISTRY).decode()
            assert _sample(text, "cardsvc_db_pool_connections_in_use") == 1.0
            assert _sample(text, "cardsvc_db_pool_waiting") == 1.0
        assert await waiter == 1
        health.sample_pool()
        text = generate_latest(metrics.REGISTRY).decode()
        assert _sample(text, "cardsvc_db_pool_waiting") == 0.0
    finally:
        await pool.close()
