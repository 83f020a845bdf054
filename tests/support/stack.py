"""A whole cardsvc system of its own for fault tests: a PostgreSQL cluster, hsm_stub, and
the service as a separate process (several workers), with its log in a file. Tests may
stop, kill or slow any part without touching the session-wide services."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from cardsvc.devenv.pgcluster import LocalCluster
from tests.support.api import REGION
from tests.support.hsm import HsmProcess

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    def __init__(self, *, workers: int = 2, env: dict[str, str] | None = None) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="cardsvc-stack-"))
        self.base.chmod(0o755)  # the cluster may run as the postgres user
        self.workers = workers
        self.cluster = LocalCluster(self.base / "pg", _free_port(), durable=True)
        self.hsm = HsmProcess(keystore_dir=self.base / "hsm", regions=[REGION])
        self.port = _free_port()
        self.admin_token = secrets.token_hex(16)
        self.data_key = secrets.token_hex(32)
        self.log_path = self.base / "cardsvc.log"
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database_url(self) -> str:
        return self.cluster.url("cardsvc")

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "CARDSVC_ADMIN_TOKEN": self.admin_token,
            "CARDSVC_DATA_KEY": self.data_key,
            **self.hsm.cardsvc_env(),
            "CARDSVC_PORT": str(self.port),
            "CARDSVC_WORKERS": str(self.workers),
            "CARDSVC_LOG_LEVEL": "info",
            "CARDSVC_AUDIT_ANCHOR_DIR": str(self.base / "audit-anchors"),
            **self.extra_env,
        }

    def start(self) -> Stack:
        self.cluster.ensure()
        self.cluster.start()
        self.cluster.create_database("cardsvc")
        self.hsm.start()
        self.start_service()
        return self

    def start_service(self) -> None:
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cardsvc", "serve"],
                env=self.env(),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready()

    def wait_ready(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"cardsvc exited: see {self.log_path}")
            try:
                with urllib.request.urlopen(self.base_url + "/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"cardsvc did not become ready: see {self.log_path}")

    def worker_pids(self) -> set[int]:
        assert self.proc is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return {int(p) for p in out.stdout.split()}

    def stop_service(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill_all(self) -> None:
        """kill -9 the supervisor and every worker: nothing gets to clean up."""
        assert self.proc is not None
        pids = self.worker_pids() | {self.proc.pid}
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.kill_all()
        finally:
            self.hsm.stop()
            self.cluster.stop("immediate")
            shutil.rmtree(self.base, ignore_errors=True)
