"""A private PostgreSQL cluster in a folder, started from the machine's binaries.

Used by the demo (in ``var/pgdata`` of the checkout) and by the tests (in a temporary
folder). PostgreSQL refuses to run as root, so when we are root the cluster belongs to the
``postgres`` system user that Debian's package creates, and commands run through
``runuser`` from ``/`` (PostgreSQL's programs change back to the working directory, which
the postgres user may not be allowed to enter). Local connections are trusted: the cluster
listens on 127.0.0.1 only.

The postgres user must be able to reach the data folder. A checkout in a private folder
(root's home is mode 0700) is out of its reach, so there the cluster lives in the postgres
user's home instead, ``~postgres/cardsvc-clusters/<name>-<hash of the asked-for path>``
(one stable folder per asked-for path), and the asked-for path becomes a symbolic link to
it: ``var/pgdata`` still leads to the data, and deleting ``var/`` forgets the cluster (the
next ``ensure`` removes the left-over folder and starts afresh, as before).
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

POSTGRES_USER = "postgres"
RELOCATED_FOLDER = "cardsvc-clusters"


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
        self.port = port
        self.user = user
        self.durable = durable
        self._bin = _bindir()
        self._as_postgres = os.geteuid() == 0
        # The folder asked for, when the data must live elsewhere (see the module docstring).
        self.link: Path | None = None
        self._linked = False
        self._asked = datadir.absolute()
        self.datadir = datadir.resolve()
        if self._as_postgres and not _postgres_reaches(self.datadir):
            self.link = datadir.absolute()
            self.datadir = _relocated(self.link)

    def url(self, dbname: str = "cardsvc") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self._bin / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", POSTGRES_USER, "--", *cmd]
        # From "/": the caller's working directory may be closed to the postgres user.
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/")
        if check and result.returncode != 0:
            raise ClusterError(f"{args[0]} failed: {_one_line(result.stderr or result.stdout)}")
        return result

    def _prepare_dir(self) -> None:
        if self.link is not None:
            self._place_link(self.link)
        self.datadir.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.datadir, POSTGRES_USER, POSTGRES_USER)
        self.datadir.chmod(0o700)

    def _place_link(self, link: Path) -> None:
        """Make ``link`` lead to the relocated data folder, which starts empty."""
        if link.is_symlink():
            link.unlink()  # it leads somewhere the postgres user cannot reach
        elif link.exists():
            if not link.is_dir() or any(link.iterdir()):
                raise ClusterError(
                    f"{link} is out of the postgres user's reach (a folder on its path is "
                    "private) and is not empty: move it, or open its parent folders (chmod o+x)"
                )
            link.rmdir()
        if self.datadir.exists():
            # Left over from a link since deleted (a removed var/): that cluster is forgotten.
            if self.is_running():
                self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
            shutil.rmtree(self.datadir)
        home = self.datadir.parent
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.chown(home, POSTGRES_USER, POSTGRES_USER)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(self.datadir, target_is_directory=True)
        self._linked = True

    def ensure(self) -> bool:
        """Create the cluster if the folder holds none; True if it was created now."""
        # With a link still to place, what the relocated folder holds belongs to no one.
        if (self.link is None or self._linked) and (self.datadir / "PG_VERSION").exists():
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
        try:
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
        except ClusterError as exc:
            # pg_ctl only says "could not start server": the log says why.
            raise ClusterError(f"{exc} ({_log_reason(log)}; log {log})") from None

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        """Stop the cluster at once and remove its data (and the link to it, if any)."""
        self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)
        if self._asked.is_symlink():
            self._asked.unlink()

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


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def _log_reason(log: Path) -> str:
    """The server log's last words on why it stopped, without timestamps."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no server log"
    said = [
        re.sub(r"^\S+ \S+ \S+ \[\d+\]\s*", "", line).strip()
        for line in lines
        if re.search(r"FATAL|ERROR|PANIC|could not", line)
    ]
    return "; ".join(said[-3:] or lines[-1:] or ["empty server log"])


def _postgres_reaches(path: Path) -> bool:
    """Whether the postgres user can enter ``path`` (or its nearest existing parent)."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    probe = ["runuser", "-u", POSTGRES_USER, "--", "test", "-x", str(existing)]
    return subprocess.run(probe, capture_output=True, check=False, cwd="/").returncode == 0


def _relocated(link: Path) -> Path:
    """The stable folder in the postgres user's home for a cluster asked for at ``link``."""
    try:
        home = Path(pwd.getpwnam(POSTGRES_USER).pw_dir)
    except KeyError:
        raise ClusterError(
            "there is no postgres user to run PostgreSQL as: install the Debian package postgresql"
        ) from None
    name = re.sub(r"[^A-Za-z0-9_.]+", "-", "-".join(link.parts[-3:])).strip("-")
    digest = hashlib.sha256(str(link).encode()).hexdigest()[:12]
    return home / RELOCATED_FOLDER / f"{name}-{digest}"
