"""The harness's own environment: PostgreSQL, hsm_stub and cardsvc as child processes.

By default a private, durable cluster in ``<state>/pgdata`` (``LocalCluster``: fsync and
synchronous commit on, as in production); with a database URL, that server instead. hsm_stub
and cardsvc listen on free loopback ports; cardsvc runs ``CARDSVC_WORKERS`` workers. Every
child is stopped on leaving the context, also after an error or Ctrl-C.

``CARDSVC_*`` tuning variables of the caller's environment (pool sizes, timeouts …) reach
the service unchanged; the harness sets only addresses, secrets (as files), the HSM link's
mutual-TLS credentials, the worker count, a long card-token life and the log level.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import urlsplit

from cardsvc import db
from cardsvc.devenv.pgcluster import LocalCluster
from hsmlink.credentials import CredentialPaths, client_context, make_credentials
from loadtest.admin import operator_token as harness_operator_token
from loadtest.state import ROOT, StateDir

ADMDVS = "320200"  # the city's insurance region (Wuxi); issuer keys are per region
_HSM_LISTENING = re.compile(r"hsm_stub listening on (\S+):(\d+)")
_STOP_TIMEOUT = 20.0
# Secrets and addresses the harness decides; the caller's values must not leak through.
_OWNED = (
    "DATABASE_URL",
    "CARDSVC_ADMIN_TOKEN",
    "CARDSVC_DATA_KEY",
    "HSM_LMK",
    "CARDSVC_HSM_CA_FILE",
    "CARDSVC_HSM_CERT_FILE",
    "CARDSVC_HSM_KEY_FILE",
)


class StartError(RuntimeError):
    """A child process did not come up; the message names its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Environment:
    """``with Environment(...) as env:`` — database ready, hsm_stub and cardsvc listening."""

    def __init__(
        self,
        state: StateDir,
        run_dir: Path,
        *,
        database_url: str | None = None,
        workers: int = 2,
        durable: bool = True,
        service: bool = True,
        service_root: Path | None = None,
    ) -> None:
        self.state = state
        # Where hsm_stub and cardsvc run from: this checkout, or another (a baseline).
        self.service_root = (service_root or ROOT).resolve()
        self.run_dir = run_dir
        self.workers = workers
        self.durable = durable
        self._want_service = service
        self._given_url = database_url
        self.cluster: LocalCluster | None = None
        self.database_url = ""
        self.hsm_host, self.hsm_port = "127.0.0.1", 0
        self.hsm_credentials = CredentialPaths(state.hsm_credentials)
        self.base_url = ""
        self.operator_token = ""
        self.data_key = b""
        self.service_env: dict[str, str] = {}
        self._children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._logs: list[IO[bytes]] = []

    # --- life cycle -------------------------------------------------------------------

    def __enter__(self) -> Environment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.state.prepare()
        self.state.lock()
        self.data_key = bytes.fromhex(self.state.secret("data_key", 32))
        self._database()
        self._hsm()
        if self._want_service:
            self._service()  # which applies its own migrations first
        else:
            asyncio.run(db.migrate_url(self.database_url))

    def stop(self) -> None:
        # Ctrl-C here must not leave children behind: ignore it until all are stopped.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for _name, proc in reversed(self._children):
                _terminate(proc)
            self._children.clear()
            for log in self._logs:
                log.close()
            self._logs.clear()
            if self.cluster is not None:
                with contextlib.suppress(Exception):
                    self.cluster.stop()
                self.cluster = None
            self.state.unlock()
        finally:
            signal.signal(signal.SIGINT, previous)

    # --- pieces -----------------------------------------------------------------------

    def _database(self) -> None:
        if self._given_url:
            self.database_url = self._given_url
            return
        self.cluster = LocalCluster(self.state.pgdata, free_port(), durable=self.durable)
        self.cluster.ensure()
        if self.cluster.is_running():
            # Left running by a command that was killed: use it where it listens.
            self.cluster.port = _postmaster_port(self.cluster.datadir) or self.cluster.port
        self.cluster.start()
        self.cluster.create_database("cardsvc")
        self.database_url = self.cluster.url("cardsvc")

    @property
    def pg_address(self) -> tuple[str, int, str]:
        """host, port and user of the database server."""
        parts = urlsplit(self.database_url)
        return parts.hostname or "127.0.0.1", parts.port or 5432, parts.username or "postgres"

    def hsm_tls(self) -> ssl.SSLContext:
        """cardsvc's side of the HSM link, for the harness's own HSM calls (card keys)."""
        paths = self.hsm_credentials
        return client_context(paths.ca_cert, paths.client_cert, paths.client_key)

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _OWNED}
        python_path = os.pathsep.join(
            filter(None, [str(self.service_root), os.environ.get("PYTHONPATH")])
        )
        env["PYTHONPATH"] = python_path
        return env

    def _hsm(self) -> None:
        env = self._child_env()
        env["HSM_LMK"] = self.state.secret("hsm_lmk", 16)
        log = self._log("hsm_stub.log")
        cmd = [sys.executable, "-m", "hsm_stub", "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--keystore", str(self.state.keystore), "--regions", ADMDVS]
        make_credentials(self.hsm_credentials.directory)  # once; kept afterwards
        cmd += ["--credentials", str(self.hsm_credentials.directory)]
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            cmd,
            cwd=self.service_root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        self._children.append(("hsm_stub", proc))
        assert proc.stdout is not None
        line = proc.stdout.readline().decode(errors="replace")  # its only stdout line
        match = _HSM_LISTENING.search(line)
        if match is None:
            raise StartError(f"hsm_stub did not start: see {log.name}")
        self.hsm_port = int(match.group(2))

    def _service(self) -> None:
        port = free_port()
        env = self._child_env()
        env.update(
            {
                "DATABASE_URL": self.database_url,
                "CARDSVC_HOST": "127.0.0.1",
                "CARDSVC_PORT": str(port),
                "CARDSVC_WORKERS": str(self.workers),
                "CARDSVC_HSM_HOST": self.hsm_host,
                "CARDSVC_HSM_PORT": str(self.hsm_port),
                "CARDSVC_HSM_CA_FILE": str(self.hsm_credentials.ca_cert),
                "CARDSVC_HSM_CERT_FILE": str(self.hsm_credentials.client_cert),
                "CARDSVC_HSM_KEY_FILE": str(self.hsm_credentials.client_key),
                "CARDSVC_ADMIN_TOKEN_FILE": str(self.state.secret_file("admin_token", 24)),
                "CARDSVC_DATA_KEY_FILE": str(self.state.secret_file("data_key", 32)),
            }
        )
        # Tokens are prepared before the timed phase and must outlive it.
        env.setdefault("CARDSVC_CARD_TOKEN_TTL", "86400")
        env.setdefault("CARDSVC_LOG_LEVEL", "warning")
        # Every simulated terminal signs in from this one host, all at once.
        env.setdefault("CARDSVC_SIGN_IN_ADDRESS_BURST", "1000000")
        self.service_env = {
            k: v for k, v in env.items() if k.startswith("CARDSVC_") and not k.endswith("_FILE")
        }
        log = self._log("cardsvc.log")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cardsvc", "serve"],
            cwd=self.service_root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._children.append(("cardsvc", proc))
        self.base_url = f"http://127.0.0.1:{port}"
        self._wait_ready(proc, log.name)
        # The bootstrap token only creates the first administrator: the harness works with
        # an operator token of its own (loadtest/admin.py).
        token_file = self.state.path / "secrets" / "operator_token"
        saved = token_file.read_text().strip() if token_file.exists() else None
        self.operator_token = asyncio.run(
            harness_operator_token(
                self.base_url,
                self.state.secret("admin_token", 24),
                self.state.secret("operator_password", 24),
                saved,
            )
        )
        if self.operator_token != saved:
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(self.operator_token)

    def _wait_ready(self, proc: subprocess.Popen[bytes], log_name: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StartError(f"cardsvc exited with {proc.returncode}: see {log_name}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                # Loopback only: the service this harness started.
                with urllib.request.urlopen(self.base_url + "/readyz", timeout=2) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
            time.sleep(0.2)
        raise StartError(f"cardsvc did not become ready within 60 s: see {log_name}")

    def _log(self, name: str) -> IO[bytes]:
        log = (self.run_dir / name).open("ab")
        self._logs.append(log)
        return log

    # --- what the report needs ----------------------------------------------------------

    def pids(self, name: str) -> list[int]:
        """The child's pid and its descendants' (cardsvc's workers)."""
        for child_name, proc in self._children:
            if child_name == name and proc.poll() is None:
                return [proc.pid, *_descendants(proc.pid)]
        return []

    def postgres_pids(self) -> list[int]:
        if self.cluster is None:
            return []
        pid_file = self.cluster.datadir / "postmaster.pid"
        try:
            postmaster = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return [postmaster, *_descendants(postmaster)]

    async def cardsvc_cli(self, *args: str, **extra_env: str) -> tuple[int, str, str]:
        """Run ``python -m cardsvc ARGS`` against this database: exit status, out, err."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cardsvc",
            *args,
            cwd=self.service_root,
            env=self.cli_env(**extra_env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")

    def cli_env(self, **extra: str) -> dict[str, str]:
        """Environment for ``python -m cardsvc <command>`` against this database."""
        env = self._child_env()
        env.update(
            {
                "DATABASE_URL": self.database_url,
                "CARDSVC_ADMIN_TOKEN_FILE": str(self.state.secret_file("admin_token", 24)),
                "CARDSVC_DATA_KEY_FILE": str(self.state.secret_file("data_key", 32)),
                "CARDSVC_LOG_LEVEL": "warning",
            }
        )
        env.update(extra)
        return env


def _postmaster_port(datadir: Path) -> int | None:
    try:
        return int((datadir / "postmaster.pid").read_text().splitlines()[3])
    except (OSError, ValueError, IndexError):
        return None


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
