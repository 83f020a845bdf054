"""``python -m cardsvc``: serve, migrate, verify the audit chain, prove the ledger."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from pathlib import Path

import msgspec

from cardsvc import db
from cardsvc.audit.services import AuditLog, VerifyResult
from cardsvc.clearing.services import Clearing
from cardsvc.config import ConfigError, Settings, load_settings
from cardsvc.ledger.services import Ledger, LedgerProof
from cardsvc.logging import configure_logging


async def _check(settings: Settings, what: str) -> bool:
    """Run one of the integrity checks, print its JSON verdict, return whether it passed."""
    pool = await db.create_pool(settings)
    try:
        result: VerifyResult | LedgerProof
        ledger = Ledger(pool, timeout=settings.long_request_timeout)
        result = await (AuditLog(pool).verify() if what == "audit" else ledger.prove())
    finally:
        await pool.close()
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(result)).decode() + "\n")
    return result.ok


async def _clearing(settings: Settings, day: dt.date, out: Path) -> int:
    """Run the day's clearing (or read the run already made) and write its files."""
    pool = await db.create_pool(settings)
    try:
        clearing = Clearing(pool, AuditLog(pool), timeout=settings.clearing_timeout)
        run = await clearing.run(day)
        folder = out / day.isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        for facility in run.facilities:
            content = await clearing.file(day, facility.fixmedins_code)
            (folder / f"{facility.fixmedins_code}.csv").write_text(content)
    finally:
        await pool.close()
    (folder / "summary.json").write_bytes(msgspec.json.format(msgspec.json.encode(run)))
    print(
        f"clearing {day}: {run.settlements_cleared} settlements, {run.reversals_netted} reversals,"
        f" {len(run.facilities)} facilities, net {run.net_total} fen -> {folder}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cardsvc")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP service (applies migrations first)")
    sub.add_parser("migrate", help="apply pending database migrations")
    sub.add_parser("verify-audit", help="verify the audit hash chains; exit 1 if broken")
    sub.add_parser("prove-ledger", help="prove the ledger balances; exit 1 if not")
    clearing = sub.add_parser("clearing", help="run (or re-read) a day's clearing, write files")
    clearing.add_argument("--date", type=dt.date.fromisoformat, required=True)
    clearing.add_argument("--out", type=Path, default=Path("var/clearing"))
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        parser.error(str(exc))
    configure_logging(settings.log_format, settings.log_level)
    if args.command == "serve":
        from cardsvc.hsm.tls import hsm_tls
        from cardsvc.server import serve

        try:
            hsm_tls(settings)  # refuse to start without a verifiable HSM link, in one line
        except ConfigError as exc:
            parser.error(str(exc))
        return serve(settings)
    if args.command == "migrate":
        for version in asyncio.run(db.migrate_url(settings.database_url)):
            print(f"applied {version}")
        return 0
    if args.command == "clearing":
        return asyncio.run(_clearing(settings, args.date, args.out))
    what = "audit" if args.command == "verify-audit" else "ledger"
    return 0 if asyncio.run(_check(settings, what)) else 1


if __name__ == "__main__":
    sys.exit(main())
