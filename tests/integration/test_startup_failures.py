"""Start-up failures are one clear line on stderr and a non-zero exit, never a traceback:
an unreadable secret file, bad settings, the port taken, the database unreachable (after a
bounded retry, with progress logged) or refusing the connection."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cardsvc.config import Settings
from tests.conftest import free_port
from tests.support.hsm import hsm_env

ROOT = Path(__file__).resolve().parents[2]


def _serve(
    settings: Settings, timeout: float = 60, **overrides: str
) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT)),
        "DATABASE_URL": settings.database_url,
        "CARDSVC_ADMIN_TOKEN": settings.admin_token,
        "CARDSVC_DATA_KEY": settings.data_key.hex(),
        **hsm_env(settings),
        "CARDSVC_PORT": str(free_port()),
        "CARDSVC_AUDIT_ANCHOR_INTERVAL": "0",
    }
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run(
        [sys.executable, "-m", "cardsvc", "serve"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout, result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cardsvc: ")
    return lines[0]


def test_a_missing_secret_file_is_one_line(settings: Settings, tmp_path: Path):
    missing = tmp_path / "no-such-key"
    result = _serve(settings, CARDSVC_DATA_KEY=None, CARDSVC_DATA_KEY_FILE=str(missing))
    line = _one_line(result)
    assert "CARDSVC_DATA_KEY_FILE" in line and str(missing) in line and "No such file" in line


def test_an_unreadable_secret_file_is_one_line(settings: Settings, tmp_path: Path):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    result = _serve(settings, CARDSVC_ADMIN_TOKEN=None, CARDSVC_ADMIN_TOKEN_FILE=str(folder))
    assert "CARDSVC_ADMIN_TOKEN_FILE" in _one_line(result)


def test_a_missing_hsm_key_file_is_one_line(settings: Settings, tmp_path: Path):
    missing = tmp_path / "client.key"
    result = _serve(settings, CARDSVC_HSM_KEY_FILE=str(missing))
    assert str(missing) in _one_line(result)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CARDSVC_LOG_LEVEL", "loud"),
        ("CARDSVC_LOG_FORMAT", "xml"),
        ("CARDSVC_PORT", "70000"),
        ("CARDSVC_PORT", "eighty"),
        ("CARDSVC_WORKERS", "0"),
        ("CARDSVC_DB_CONNECT_TIMEOUT", "soon"),
    ],
)
def test_bad_settings_are_one_line_naming_the_variable(settings: Settings, name: str, value: str):
    result = _serve(settings, **{name: value})
    assert result.returncode == 2
    assert name in _one_line(result)


def test_a_port_in_use_is_one_line(settings: Settings):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = _serve(settings, CARDSVC_PORT=str(port))
    line = _one_line(result)
    assert f"port {port}" in line and "in use" in line


def test_an_unreachable_database_is_retried_then_one_line(settings: Settings):
    port = free_port()  # nothing listens there
    url = f"postgresql://cardsvc:s3cret-pw@127.0.0.1:{port}/cardsvc"
    started = time.monotonic()
    result = _serve(settings, DATABASE_URL=url, CARDSVC_DB_CONNECT_TIMEOUT="2.5")
    took = time.monotonic() - started
    line = _one_line(result)
    assert f"cannot reach the database at 127.0.0.1:{port}/cardsvc after 2.5 s" in line
    assert 2.5 <= took < 30
    # Progress was logged while it waited; the password is nowhere.
    assert result.stdout.count("database_unreachable_retrying") >= 2, result.stdout
    assert "s3cret-pw" not in result.stdout + result.stderr


def test_a_database_that_refuses_is_one_line_at_once(settings: Settings):
    url = settings.database_url.rsplit("/", 1)[0] + "/no_such_database"
    started = time.monotonic()
    result = _serve(settings, DATABASE_URL=url, CARDSVC_DB_CONNECT_TIMEOUT="30")
    line = _one_line(result)
    assert "refused the connection" in line and "no_such_database" in line
    assert time.monotonic() - started < 20  # not retried: waiting does not cure it


def test_workers_that_keep_failing_to_start_stop_the_service_in_one_line(settings: Settings):
    """The checks before the workers pass, but every worker fails as it starts (a pool larger
    than the server's max_connections): no restarting forever, no traceback."""
    started = time.monotonic()
    result = _serve(
        settings,
        timeout=120,
        CARDSVC_WORKERS="2",
        CARDSVC_DB_POOL_MIN="300",
        CARDSVC_DB_POOL_MAX="300",
    )
    line = _one_line(result)
    assert result.returncode == 1 and "workers keep failing to start" in line
    assert time.monotonic() - started < 90
    failures = [ln for ln in result.stdout.splitlines() if '"worker_failed"' in ln]
    assert len(failures) >= 5 and all("TooManyConnectionsError" in ln for ln in failures)
