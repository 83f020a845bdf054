"""``python -m cardsvc.devenv.demo``: the whole system on this machine, with demo data.

Starts a PostgreSQL cluster in ``var/pgdata`` (unless ``DATABASE_URL`` names another
server), hsm_stub and cardsvc as child processes, loads demo data once through the admin
API, prints where everything listens, and stops it all on Ctrl-C or SIGTERM.

Secrets made on first run (admin token, data key, HSM LMK, and the HSM link's mutual-TLS
credentials in ``var/secrets/hsm-tls``) live in ``var/`` with mode 0600;
demo terminal keys go to ``var/demo/terminals.json`` for the terminal SDK's commands.

It also starts pcscd (foreground, its own reader.conf in ``var/pcscd``) with vpcd on port
35963 (``CARDSVC_VPCD_PORT``) and the demo card in the first reader slot, personalised once
from ``var/demo/card.json`` into ``var/demo/vcard.json``, so one more command runs a
card-present visit. Without pcscd or vpcd, or with another pcscd running, the rest still runs
and the banner says why the reader did not start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec

from cardsvc import db
from cardsvc.cards.records import CardRecords
from cardsvc.devenv import demodata, demoops
from cardsvc.devenv.pcsc import PcscDaemon, PcscError
from cardsvc.devenv.pgcluster import ClusterError, LocalCluster
from cardsvc.vcard.card import personalised_state
from cardsvc.vcard.state import save
from hsmlink.credentials import DEFAULT_HOSTS, CredentialsError, make_credentials

ROOT = Path(__file__).resolve().parents[2]


def _secret(path: Path, make: str) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make)
        path.chmod(0o600)
    return path.read_text().strip()


def _start(
    cmd: list[str], env: dict[str, str], ready_line: str, log: Path
) -> subprocess.Popen[str]:
    """Start a child and wait for the line that says it listens; its output goes to ``log``."""
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    with log.open("a") as out:
        for line in proc.stdout:
            out.write(line)
            if ready_line in line:
                break
            if time.monotonic() > deadline:
                break
    if proc.poll() is not None or time.monotonic() > deadline:
        proc.kill()
        raise SystemExit(f"{cmd[2]} did not start: see {log}")
    # Keep draining its output into the log so the child never blocks on a full pipe.
    _drain(proc, log)
    return proc


def _drain(proc: subprocess.Popen[str], log: Path) -> None:
    import threading

    def pump() -> None:
        assert proc.stdout is not None
        with log.open("a") as out:
            for line in proc.stdout:
                out.write(line)
                out.flush()

    threading.Thread(target=pump, daemon=True).start()


def demo_card_state(demo: Path) -> Path:
    """The demo card's state file: made once from ``card.json``, then the card's own (its
    PIN counter included: delete the file for a fresh card)."""
    path = demo / "vcard.json"
    if not path.exists():
        card = json.loads((demo / "card.json").read_text())
        records = msgspec.convert(card["records"], CardRecords)
        keys = bytes.fromhex(card["k_auth"]), bytes.fromhex(card["k_txn"])
        save(path, personalised_state(records, *keys, card["pin"]))
    return path


class CardReaderDemo:
    """pcscd with vpcd, and the demo card as a child process in its first slot."""

    def __init__(self, var: Path, port: int) -> None:
        self.daemon = PcscDaemon(var / "pcscd", port)
        self.var = var
        self.card: subprocess.Popen[str] | None = None
        self.problem: str | None = None

    def start(self, env: dict[str, str]) -> None:
        try:
            self.daemon.start()
        except PcscError as exc:
            self.problem = str(exc).splitlines()[0]
            return
        state = demo_card_state(self.var / "demo")
        port = str(self.daemon.port)
        self.card = _start(
            [sys.executable, "-m", "cardsvc.vcard", "--port", port, "--state", str(state)],
            env,
            "vcard connected",
            self.var / "log" / "vcard.log",
        )

    def stop(self) -> None:
        if self.card is not None:
            self.card.terminate()
            self.card.wait(timeout=10)
        self.daemon.stop()


async def _wait_healthy(base_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(base_url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise SystemExit("cardsvc did not become ready: see var/log/cardsvc.log")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cardsvc.devenv.demo")
    parser.add_argument("--var", type=Path, default=ROOT / "var", help="state folder")
    parser.add_argument("--pg-port", type=int, default=int(os.environ.get("CARDSVC_PG_PORT", 5433)))
    parser.add_argument("--no-wait", action="store_true", help="start, load, print, then stop")
    args = parser.parse_args(argv)
    var: Path = args.var.resolve()
    (var / "log").mkdir(parents=True, exist_ok=True)

    cluster = None
    database_url = os.environ.get("DATABASE_URL")
    if database_url is None:
        try:
            # As root the cluster runs as the postgres user; when it cannot reach var/ (a
            # checkout in a private folder), var/pgdata links to a folder it can.
            cluster = LocalCluster(var / "pgdata", args.pg_port)
            if cluster.ensure():
                print(f"created a PostgreSQL cluster in {cluster.datadir}")
            cluster.start()
            cluster.create_database("cardsvc")
        except ClusterError as exc:
            raise SystemExit(f"demo: PostgreSQL did not start: {exc}") from None
        database_url = cluster.url("cardsvc")
    try:
        asyncio.run(db.migrate_url(database_url))
    except (OSError, asyncpg.PostgresError) as exc:
        if cluster is not None:
            cluster.stop()
        # Not the URL itself: a DATABASE_URL may carry a password.
        raise SystemExit(f"demo: could not apply the migrations to the database: {exc}") from None

    host = os.environ.get("CARDSVC_HOST", "127.0.0.1")
    port = os.environ.get("CARDSVC_PORT", "8080")
    hsm_host = os.environ.get("CARDSVC_HSM_HOST", "127.0.0.1")
    hsm_port = os.environ.get("CARDSVC_HSM_PORT", "9510")
    # The HSM link is mutual TLS: its CA and both certificates, made once and kept; the
    # server certificate is issued again when it does not name CARDSVC_HSM_HOST.
    try:
        hsm_tls, _ = make_credentials(
            var / "secrets" / "hsm-tls",
            hosts=list(dict.fromkeys([hsm_host, *DEFAULT_HOSTS])),
            renew_misnamed=True,
        )
    except (CredentialsError, OSError, ValueError) as exc:
        raise SystemExit(f"demo: the HSM link's credentials: {exc}") from None
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CARDSVC_HOST": host,
        "CARDSVC_PORT": port,
        "CARDSVC_HSM_HOST": hsm_host,
        "CARDSVC_HSM_PORT": hsm_port,
        "CARDSVC_HSM_CA_FILE": str(hsm_tls.ca_cert),
        "CARDSVC_HSM_CERT_FILE": str(hsm_tls.client_cert),
        "CARDSVC_HSM_KEY_FILE": str(hsm_tls.client_key),
        "CARDSVC_ADMIN_TOKEN": _secret(var / "secrets" / "admin_token", secrets.token_hex(24)),
        "CARDSVC_DATA_KEY": _secret(var / "secrets" / "data_key", secrets.token_hex(32)),
        "HSM_LMK": _secret(var / "secrets" / "hsm_lmk", secrets.token_hex(16)),
    }
    children: list[subprocess.Popen[str]] = []
    reader = CardReaderDemo(var, int(os.environ.get("CARDSVC_VPCD_PORT", 35963)))
    try:
        children.append(
            _start(
                [
                    sys.executable,
                    "-m",
                    "hsm_stub",
                    "--host",
                    hsm_host,
                    "--port",
                    hsm_port,
                    "--keystore",
                    str(var / "hsm"),
                    "--regions",
                    demodata.REGION,  # every demo person's region: provisioned, no other
                    "--credentials",
                    str(hsm_tls.directory),
                ],
                env,
                "listening",
                var / "log" / "hsm_stub.log",
            )
        )
        children.append(
            _start(
                [sys.executable, "-m", "cardsvc", "serve"],
                env,
                "listening",
                var / "log" / "cardsvc.log",
            )
        )
        base_url = f"http://{host}:{port}"
        asyncio.run(_wait_healthy(base_url))
        try:
            token, clerk_token = asyncio.run(
                demoops.ensure(base_url, env["CARDSVC_ADMIN_TOKEN"], var / "secrets")
            )
            summary = asyncio.run(demodata.load(base_url, token, var / "demo", clerk_token))
        except (RuntimeError, aiohttp.ClientError, OSError) as exc:
            raise SystemExit(f"demo: loading the demo data failed: {exc}") from None
        reader.start(env)
        if reader.card is not None:
            children.append(reader.card)
        lines = _reader_lines(reader, base_url, var, summary)
        _print_banner(base_url, hsm_host, hsm_port, database_url, env, var, summary, lines)
        if not args.no_wait:
            _wait_for_signal(children)
    finally:
        if reader.card is not None:
            children.remove(reader.card)
        reader.stop()
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        if cluster is not None:
            cluster.stop()
        print("stopped")
    return 0


def _wait_for_signal(children: list[subprocess.Popen[str]]) -> None:
    stop = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop:
        for child in children:
            if child.poll() is not None:
                print(f"a child process exited ({child.args!r}); stopping", file=sys.stderr)
                return
        time.sleep(0.5)


def _print_banner(
    base_url: str,
    hsm_host: str,
    hsm_port: str,
    database_url: str,
    env: dict[str, str],
    var: Path,
    summary: dict[str, Any],
    reader_lines: list[str],
) -> None:
    shown = {key: value for key, value in summary.items() if key != demodata.KINDS_BOUND}
    print(
        "\n".join(
            [
                "",
                "cardsvc demo is running",
                f"  cardsvc       {base_url}  (readiness {base_url}/readyz)",
                f"  hsm_stub      {hsm_host}:{hsm_port}  (mutual TLS, credentials in"
                f" {var / 'secrets' / 'hsm-tls'})",
                f"  PostgreSQL    {database_url}",
                f"  console       {base_url}/console/",
                "  operators     "
                + ", ".join(f"{login} ({role})" for login, _, role in demoops.OPERATORS),
                f"  passwords     {var / 'secrets' / 'operators'}/<login>  (mode 0600)",
                f"  API token     {var / 'secrets' / 'operator_token'}  (demo.admin's)",
                f"  demo data     {json.dumps(shown, ensure_ascii=False)}",
                f"  terminal keys {var / 'demo' / 'terminals.json'}",
                f"  logs          {var / 'log'}",
                *reader_lines,
                "",
                f'try:  curl -H "Authorization: Bearer $(cat {var / "secrets" / "clerk_token"})" '
                f"{base_url}/v1/persons/{summary.get('demo_psn_no', '<psn_no>')}",
                "Ctrl-C stops everything.",
            ]
        ),
        flush=True,
    )


def _reader_lines(
    reader: CardReaderDemo, base_url: str, var: Path, summary: dict[str, Any]
) -> list[str]:
    if reader.problem is not None:
        return [f"  card reader   not started: {reader.problem}"]
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else ""
    terminal = f"{python or sys.executable} -m cardsvc.terminal_sdk"
    extra = "" if base_url == "http://127.0.0.1:8080" else f" --base-url {base_url}"
    if var != ROOT / "var":
        extra += f" --terminals {var / 'demo' / 'terminals.json'}"
    pin = summary.get("demo_card_pin", demodata.DEMO_PIN)
    return [
        f"  card reader   {reader.daemon.reader_names[0]} (pcscd; vpcd on port "
        f"{reader.daemon.port}) holds demo card {summary.get('demo_card_no')} (PIN {pin})",
        "",
        "a card-present visit (from the checkout folder):",
        f"  {terminal} visit --pin {pin} --item A-AMOX:12.00x2{extra}",
        f"  then {terminal} kiosk --terminal kiosk{extra}   (or read-card)",
    ]


if __name__ == "__main__":
    sys.exit(main())
