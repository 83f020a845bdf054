"""The multi-worker server: workers share the port, a killed worker is replaced, SIGTERM
stops everything cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from cardsvc.config import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return {int(p) for p in out.stdout.split()}


async def _ready(http: aiohttp.ClientSession, url: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            async with http.get(url + "/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("service did not become ready")


def _env(settings: Settings, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "CARDSVC_ADMIN_TOKEN": settings.admin_token,
        "CARDSVC_DATA_KEY": settings.data_key.hex(),
        "CARDSVC_HSM_HOST": settings.hsm_host,
        "CARDSVC_HSM_PORT": str(settings.hsm_port),
        "CARDSVC_HSM_CA_FILE": settings.hsm_ca_file,
        "CARDSVC_HSM_CERT_FILE": settings.hsm_cert_file,
        "CARDSVC_HSM_KEY_FILE": settings.hsm_key_file,
        "CARDSVC_PORT": str(port),
        "CARDSVC_WORKERS": "2",
        "CARDSVC_LOG_LEVEL": "warning",
    }


async def test_workers_share_the_port_and_are_replaced(settings: Settings):
    port = free_port()
    env = _env(settings, port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cardsvc", "serve"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await _ready(http, url)
            deadline = time.monotonic() + 10
            while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            workers = _children(proc.pid)
            assert len(workers) == 2
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            await _ready(http, url)  # the other worker answers meanwhile
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                now = _children(proc.pid)
                if len(now) == 2 and victim not in now:
                    break
                await asyncio.sleep(0.1)
            assert len(_children(proc.pid)) == 2 and victim not in _children(proc.pid)
            await _ready(http, url)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_worker_that_never_ends_is_killed_when_the_service_stops(settings: Settings):
    """A stuck worker (here stopped outright) does not keep the service, or itself, alive
    after SIGTERM: once the drain time and a margin are over, the supervisor kills it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cardsvc", "serve"],
        env=_env(settings, port),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as http:
            await _ready(http, f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 10
        while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stuck = min(_children(proc.pid))
        os.kill(stuck, signal.SIGSTOP)  # it will never handle SIGTERM
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        with pytest.raises(ProcessLookupError):
            os.kill(stuck, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _children(proc.pid):
            os.kill(pid, signal.SIGKILL)
