"""A private PostgreSQL cluster in a folder, started from the machine's binaries.

Used by the demo (in ``var/pgdata`` of the checkout) and by the tests (in a temporary
folder). PostgreSQL refuses to run as root, so when we are root the cluster belongs to the
``postgres`` system user that Debian's package creates, and commands run through
``runuser``. Local connections are trusted: the cluster listens on 127.0.0.1 only.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path


class ClusterError(RuntimeError):
    """The cluster could not be created or started; the message says what to install or do."""


def _bindir() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise ClusterError(
        "PostgreSQL server binaries not found: install the Debian package postgresql"
    )


class LocalCluster:
    def __init__(self, datadir: Path, port: int, *, user: str = "cardsvc", durable: bool = True):
        self.datadir = datadir.resolve()
        self.port = port
        self.user = user
        self.durable = durable
        self._bin = _bindir()
        self._as_postgres = os.geteuid() == 0

    def url(self, dbname: str = "cardsvc") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self._bin / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise ClusterError(
                f"{args[0]} failed: {result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def _prepare_dir(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.datadir, "postgres", "postgres")
        self.datadir.chmod(0o700)

    def ensure(self) -> bool:
        """Create the cluster if the folder holds none; True if it was created now."""
        if (self.datadir / "PG_VERSION").exists():
            return False
        self._prepare_dir()
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            self.user,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-instructions",
        )
        return True

    def _options(self) -> str:
        opts = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.datadir}",
            "-c max_connections=200",
            "-c shared_buffers=256MB",
        ]
        if not self.durable:
            # Test clusters are thrown away: durability buys nothing there.
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        return " ".join(opts)

    def is_running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.datadir), "status", check=False).returncode == 0

    def start(self) -> None:
        if self.is_running():
            return
        log = self.datadir / "server.log"
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-o",
            self._options(),
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def create_database(self, dbname: str) -> None:
        result = self._run(
            "createdb",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            self.user,
            dbname,
            check=False,
        )
        if result.returncode != 0 and "already exists" not in result.stderr:
            raise ClusterError(f"createdb failed: {result.stderr.strip()}")

    def dump(self, dbname: str) -> str:
        """``pg_dump`` of a database, as plain SQL text (what a stolen backup shows)."""
        result = self._run(
            "pg_dump", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, dbname
        )
        return result.stdout
