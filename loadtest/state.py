"""The harness's state folder (default ``var/loadtest``) and what it keeps between commands.

Layout::

    var/loadtest/
      secrets/        admin_token (bootstrap), operator_token and operator_password (the
                      harness's operator), data_key, hsm_lmk (mode 0600, made on first use)
      pgdata/         the private PostgreSQL cluster (unless DATABASE_URL is given)
      hsm/            hsm_stub's keystore (issuer keys under the LMK)
      secrets/hsm-tls/ the HSM link's CA and certificates (mutual TLS)
      city.json       what was seeded: sequence bases, facilities, terminals and their keys
      workset.json    the cards the load uses, with their card keys (mode 0600)
      <timestamp>/    one folder per command run: report.json, report.png, service logs

Terminal and card keys stand in for the secure elements of terminals and cards; they are
files of mode 0600 like the demo's, never printed or logged.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import secrets
from pathlib import Path
from typing import IO

import msgspec

from cardsvc import clock
from loadtest.sessions import Cache

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VAR = ROOT / "var" / "loadtest"


class Facility(msgspec.Struct, kw_only=True):
    fixmedins_code: str
    type: str
    level: str | None
    agreements: list[str]
    credit_rating: str


class Terminal(msgspec.Struct, kw_only=True):
    terminal_id: str
    kind: str
    key: str  # hex K_term, shown once at registration
    fixmedins_code: str | None = None


class CityDay(msgspec.Struct, kw_only=True):
    """A day of settlements seeded by ``seed-settlements``: what reconciliation must find."""

    date: dt.date
    count: int
    reversed: int
    # "<fixmedins_code>:<insutype>" -> [count, medfee_sumamt, fund_pay_sumamt, acct_pay]
    totals: dict[str, list[int]]


class City(msgspec.Struct, kw_only=True):
    admdvs: str
    persons: int = 0
    psn_seq_base: int = 0  # person i has psn_no admdvs + (base + i)
    card_seq_base: int = 0
    case_seq_base: int = 0
    catalog_items: int = 0
    facilities: list[Facility] = []
    terminals: list[Terminal] = []
    days: list[CityDay] = []
    seed_seconds: dict[str, float] = {}


class WorkCard(msgspec.Struct, kw_only=True, array_like=True):
    """A card the load uses: its person's shape and the card's keys (for the soft card)."""

    card_no: str
    card_sn: str
    psn_no: str
    psn_type: str
    gend: str
    insutypes: list[str]
    injury_case_id: str | None
    k_auth: str
    k_txn: str


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self._lock: IO[str] | None = None

    def lock(self) -> None:
        """One command at a time per state folder (they share the cluster and city)."""
        if self._lock is not None:
            return
        handle = (self.path / ".lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another loadtest command using {self.path}", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing releases the lock
            self._lock = None

    def prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        # The cluster may run as the postgres user: it must be able to reach pgdata.
        self.path.chmod(0o755)

    @property
    def pgdata(self) -> Path:
        return self.path / "pgdata"

    @property
    def keystore(self) -> Path:
        return self.path / "hsm"

    @property
    def hsm_credentials(self) -> Path:
        """The HSM link's mutual-TLS CA and certificates (``make_credentials``)."""
        return self.path / "secrets" / "hsm-tls"

    def secret_file(self, name: str, make: int) -> Path:
        """A secret of ``make`` random bytes (hex), created once with mode 0600."""
        folder = self.path / "secrets"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / name
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(make))
        return path

    def secret(self, name: str, make: int) -> str:
        return self.secret_file(name, make).read_text().strip()

    def new_run_dir(self, label: str) -> Path:
        stamp = clock.now().astimezone(clock.BUSINESS_TZ).strftime("%Y%m%d-%H%M%S")
        run = self.path / f"{stamp}-{label}"
        suffix = 1
        while run.exists():
            suffix += 1
            run = self.path / f"{stamp}-{label}-{suffix}"
        run.mkdir(parents=True)
        return run

    def load_city(self) -> City | None:
        path = self.path / "city.json"
        if not path.exists():
            return None
        return msgspec.json.decode(path.read_bytes(), type=City)

    def save_city(self, city: City) -> None:
        _write_private(self.path / "city.json", msgspec.json.format(msgspec.json.encode(city)))

    def load_workset(self) -> list[WorkCard]:
        path = self.path / "workset.json"
        if not path.exists():
            return []
        return msgspec.json.decode(path.read_bytes(), type=list[WorkCard])

    def save_workset(self, cards: list[WorkCard]) -> None:
        _write_private(self.path / "workset.json", msgspec.json.encode(cards))

    def load_sessions(self, database: str) -> Cache:
        """Sessions of earlier runs against this very database (else none)."""
        path = self.path / "sessions.json"
        if path.exists():
            cache = msgspec.json.decode(path.read_bytes(), type=Cache)
            if cache.database == database:
                return cache
        return Cache(database=database)

    def save_sessions(self, cache: Cache) -> None:
        _write_private(self.path / "sessions.json", msgspec.json.encode(cache))

    def forget_city(self) -> None:
        for name in ("city.json", "workset.json", "sessions.json"):
            (self.path / name).unlink(missing_ok=True)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)
