"""``python -m cardsvc``: serve, migrate, verify the audit chain, prove the ledger."""

from __future__ import annotations

import argparse
import asyncio
import sys

import msgspec
from aiohttp import web

from cardsvc import db
from cardsvc.audit.services import AuditLog, VerifyResult
from cardsvc.config import ConfigError, Settings, load_settings
from cardsvc.ledger.services import Ledger, LedgerProof
from cardsvc.logging import configure_logging


def _serve(settings: Settings) -> int:
    import uvloop

    from cardsvc.app import create_app

    uvloop.install()
    asyncio.run(db.migrate_url(settings.database_url))
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        print=lambda msg: print(f"cardsvc listening on http://{settings.host}:{settings.port}"),
        access_log=None,
        shutdown_timeout=10.0,
    )
    return 0


async def _check(settings: Settings, what: str) -> bool:
    """Run one of the integrity checks, print its JSON verdict, return whether it passed."""
    pool = await db.create_pool(settings)
    try:
        result: VerifyResult | LedgerProof
        result = await (AuditLog(pool).verify() if what == "audit" else Ledger(pool).prove())
    finally:
        await pool.close()
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(result)).decode() + "\n")
    return result.ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cardsvc")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP service (applies migrations first)")
    sub.add_parser("migrate", help="apply pending database migrations")
    sub.add_parser("verify-audit", help="verify the audit hash chains; exit 1 if broken")
    sub.add_parser("prove-ledger", help="prove the ledger balances; exit 1 if not")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        parser.error(str(exc))
    configure_logging(settings.log_format, settings.log_level)
    if args.command == "serve":
        return _serve(settings)
    if args.command == "migrate":
        for version in asyncio.run(db.migrate_url(settings.database_url)):
            print(f"applied {version}")
        return 0
    what = "audit" if args.command == "verify-audit" else "ledger"
    return 0 if asyncio.run(_check(settings, what)) else 1


if __name__ == "__main__":
    sys.exit(main())
