"""``python -m cardsvc``: serve, migrate, create an operator, anchor and verify the audit
chain, prove the ledger, rotate the data key."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import sys
from pathlib import Path

import asyncpg
import msgspec

from cardsvc import db
from cardsvc.audit.services import AuditLog, VerifyResult
from cardsvc.clearing.services import Clearing
from cardsvc.config import ConfigError, Settings, load_settings, read_data_key_file
from cardsvc.datakey import services as datakey
from cardsvc.errors import CardsvcError
from cardsvc.hsm.tls import hsm_client
from cardsvc.ledger.services import Ledger, LedgerProof
from cardsvc.logging import configure_logging
from cardsvc.server import StartupError
from cardsvc.services import audit_anchors
from cardsvc.web.caller import COMMAND_LINE


async def _check(settings: Settings, what: str, anchors: Path | None = None) -> bool:
    """Run one of the integrity checks, print its JSON verdict, return whether it passed.
    The audit check needs the HSM: it checks the chains against the exported anchors."""
    pool = await db.create_pool(settings)
    try:
        result: VerifyResult | LedgerProof
        if what == "audit":
            async with hsm_client(settings) as hsm:
                audit = AuditLog(pool, timeout=settings.long_request_timeout)
                checker = audit_anchors(settings, pool, hsm, audit)
                result = await checker.verify(anchors)
        else:
            result = await Ledger(pool, timeout=settings.long_request_timeout).prove()
    finally:
        await pool.close()
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(result)).decode() + "\n")
    return result.ok


async def _anchor(settings: Settings) -> int:
    """Anchor the audit chains now (HSM MAC, export file, table) and print the anchor."""
    pool = await db.create_pool(settings)
    try:
        async with hsm_client(settings) as hsm:
            written = await audit_anchors(settings, pool, hsm, AuditLog(pool)).anchor()
    finally:
        await pool.close()
    sys.stdout.write(msgspec.json.encode(written).decode() + "\n")
    return 0


def _run_audit_command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if args.command == "anchor-audit":
            return asyncio.run(_anchor(settings))
        return 0 if asyncio.run(_check(settings, "audit", args.anchors)) else 1
    except CardsvcError as exc:  # the HSM or the database is down: no verdict
        sys.stderr.write(f"{args.command}: {exc.code}: {exc.message}\n")
        return 2


async def _clearing(settings: Settings, day: dt.date, out: Path) -> int:
    """Run the day's clearing (or read the run already made) and write its files."""
    pool = await db.create_pool(settings)
    try:
        clearing = Clearing(pool, AuditLog(pool), timeout=settings.clearing_timeout)
        run = await clearing.run(COMMAND_LINE, day)
        folder = out / day.isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        for facility in run.facilities:
            chunks = await clearing.file(day, facility.fixmedins_code)
            with (folder / f"{facility.fixmedins_code}.csv").open("wb") as written:
                async for chunk in chunks:
                    written.write(chunk)
    finally:
        await pool.close()
    (folder / "summary.json").write_bytes(msgspec.json.format(msgspec.json.encode(run)))
    print(
        f"clearing {day}: {run.settlements_cleared} settlements, {run.reversals_netted} reversals,"
        f" {len(run.facilities)} facilities, net {run.net_total} fen -> {folder}"
    )
    return 0


def _read_password(path: Path | None) -> str:
    """From the file (its first line), else asked twice at the terminal, never echoed."""
    if path is not None:
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"--password-file: cannot read {path}: {exc.strerror}") from None
        return lines[0] if lines else ""
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise ConfigError("the two passwords differ")
    return first


async def _create_operator(settings: Settings, args: argparse.Namespace, password: str) -> int:
    """Create an operator directly in the database (the first administrator, or one more):
    whoever runs this holds the service's settings, so no token is needed."""
    from cardsvc.operators.models import CreateOperator
    from cardsvc.operators.services import Operators

    try:
        req = msgspec.convert(
            {
                "login": args.login,
                "display_name": args.name,
                "roles": args.role,
                "password": password,
            },
            CreateOperator,
        )
    except msgspec.ValidationError as exc:
        sys.stderr.write(f"create-operator: {exc}\n")
        return 2
    pool = await db.create_pool(settings)
    try:
        operator = await Operators(pool, AuditLog(pool), settings).create(COMMAND_LINE, req)
    finally:
        await pool.close()
    print(operator.operator_id)
    return 0


def _rotation_progress(done: int, total: int) -> None:
    sys.stderr.write(f"rotate-data-key: {done}/{total} persons re-encrypted\n")
    sys.stderr.flush()


async def _rotate_data_key(settings: Settings, new_key: bytes, batch_size: int) -> int:
    """Offline: migrate if need be, then move everything under the data key to ``new_key``."""
    conn: db.Connection = await asyncpg.connect(settings.database_url)
    try:
        await db.migrate(conn)
        result = await datakey.rotate(
            conn, settings.data_key, new_key, batch_size=batch_size, progress=_rotation_progress
        )
    finally:
        await conn.close()
    done = "was already rotated" if result.already_done else "rotated"
    print(
        f"data key {done}: {result.persons} persons under check value {result.check_value},"
        f" {result.sessions_ended} terminal sessions ended. Set CARDSVC_DATA_KEY to the new"
        " key before starting cardsvc."
    )
    return 0


def _batch_size(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cardsvc")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP service (applies migrations first)")
    sub.add_parser("migrate", help="apply pending database migrations")
    create = sub.add_parser(
        "create-operator",
        help="create an operator (the first administrator, say); prints its id",
    )
    create.add_argument("--login", required=True, help="3-32 of a-z 0-9 . _ -")
    create.add_argument("--name", required=True, help="display name")
    create.add_argument(
        "--role",
        action="append",
        required=True,
        choices=("administrator", "clerk", "reviewer", "auditor"),
        help="a role (repeat for several)",
    )
    create.add_argument(
        "--password-file", type=Path, help="file whose first line is the password (else asked)"
    )
    verify_audit = sub.add_parser(
        "verify-audit",
        help="verify the audit hash chains against the anchors; exit 1 if broken, 2 if the"
        " HSM or database is unavailable",
    )
    verify_audit.add_argument(
        "--anchors",
        type=Path,
        help="anchor file or folder (default CARDSVC_AUDIT_ANCHOR_DIR), e.g. the shipped copy",
    )
    sub.add_parser("anchor-audit", help="anchor the audit chain heads now (HSM MAC, export)")
    sub.add_parser("prove-ledger", help="prove the ledger balances; exit 1 if not")
    clearing = sub.add_parser("clearing", help="run (or re-read) a day's clearing, write files")
    clearing.add_argument(
        "--date",
        type=dt.date.fromisoformat,
        required=True,
        metavar="YYYY-MM-DD",
        help="the business day to clear, a calendar date in Asia/Shanghai that is over"
        " (before today there); today or a later date is refused",
    )
    clearing.add_argument(
        "--out",
        type=Path,
        default=Path("var/clearing"),
        metavar="DIR",
        help="folder to write each facility's clearing file into (default: %(default)s)",
    )
    rotate = sub.add_parser(
        "rotate-data-key",
        help="re-encrypt everything under CARDSVC_DATA_KEY with a new key (service stopped)",
    )
    rotate.add_argument("--new-key-file", type=Path, required=True, help="64 hex characters")
    rotate.add_argument("--batch-size", type=_batch_size, default=datakey.DEFAULT_BATCH)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        new_key = None
        if args.command == "rotate-data-key":
            new_key = read_data_key_file(args.new_key_file, "--new-key-file")
    except ConfigError as exc:  # one line, no usage text: the settings are what is wrong
        sys.stderr.write(f"cardsvc: {exc}\n")
        return 2
    stream = sys.stdout if args.command == "serve" else sys.stderr
    configure_logging(settings.log_format, settings.log_level, stream)
    try:
        return _run(args, settings, new_key)
    except (datakey.DataKeyError, StartupError) as exc:
        sys.stderr.write(f"cardsvc: {exc}\n")
        return 1


def _run(args: argparse.Namespace, settings: Settings, new_key: bytes | None) -> int:
    if args.command == "serve":
        from cardsvc.hsm.tls import hsm_tls
        from cardsvc.server import serve

        try:
            hsm_tls(settings)  # refuse to start without a verifiable HSM link, in one line
        except ConfigError as exc:
            sys.stderr.write(f"cardsvc: {exc}\n")
            return 2
        return serve(settings)
    if args.command == "migrate":
        from cardsvc.server import prepare

        for version in asyncio.run(prepare(settings)):
            print(f"applied {version}")
        return 0
    if args.command == "create-operator":
        try:
            password = _read_password(args.password_file)
            return asyncio.run(_create_operator(settings, args, password))
        except ConfigError as exc:
            sys.stderr.write(f"create-operator: {exc}\n")
            return 2
        except CardsvcError as exc:  # refused (a weak password, a login taken) or db down
            sys.stderr.write(f"create-operator: {exc.code}: {exc.message}\n")
            return 1
    if args.command == "rotate-data-key":
        assert new_key is not None
        return asyncio.run(_rotate_data_key(settings, new_key, args.batch_size))
    if args.command == "clearing":
        try:
            return asyncio.run(_clearing(settings, args.date, args.out))
        except CardsvcError as exc:  # refused (a day not over yet) or a dependency down
            sys.stderr.write(f"clearing: {exc.code}: {exc.message}\n")
            return 1
    if args.command in ("verify-audit", "anchor-audit"):
        return _run_audit_command(settings, args)
    return 0 if asyncio.run(_check(settings, "ledger")) else 1


if __name__ == "__main__":
    sys.exit(main())
