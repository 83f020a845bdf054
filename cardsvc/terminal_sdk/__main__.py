"""``python -m cardsvc.terminal_sdk COMMAND``: a terminal on the command line (docs/readers.md).

    readers                       the PC/SC readers pcscd lists
    read-card                     the card's basic info in the national reader format
    issue --psn-no N [--pin P]    counter: issue, personalise a blank card, activate
    visit --item CODE:FEN[xQTY]…  POS: card, PIN, card-auth, preview, settle (via the outbox)
    kiosk [--report-loss]         kiosk: card-auth (no PIN), balance and recent settlements
    reverse --setl-id S           POS: reverse a settlement (via the outbox)
    outbox [--drain]              POS: what the outbox holds; deliver what is due

Terminal identities (id and K_term) come from ``--terminals`` (the demo's
``var/demo/terminals.json``), by name with ``--terminal``. Progress goes to stderr, results to
stdout. Exit status: 0 done, 1 refused or failed, 2 usage, 3 settlement outcome pending.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import structlog

from cardsvc.logging import configure_logging
from cardsvc.terminal_sdk import flows
from cardsvc.terminal_sdk.client import TerminalClient, TerminalError
from cardsvc.terminal_sdk.outbox import Entry, Forwarder, Outbox, SettlementPending
from cardsvc.terminal_sdk.reader import CardError, CardReader, list_readers, national_line

DEFAULT_TERMINALS = Path("var/demo/terminals.json")
EXIT_FAILED, EXIT_PENDING = 1, 3
_ITEM = re.compile(r"(?P<code>[A-Za-z0-9._-]{1,50}):(?P<price>\d+)(?:x(?P<qty>\d+))?")


class TerminalConfig(msgspec.Struct, frozen=True):
    terminal_id: str
    terminal_key: str
    kind: str
    fixmedins_code: str | None = None


class UsageError(Exception):
    """Bad input on the command line (shown without a traceback)."""


def load_terminal(path: Path, name: str) -> TerminalConfig:
    try:
        terminals = msgspec.json.decode(path.read_bytes(), type=dict[str, TerminalConfig])
    except FileNotFoundError:
        raise UsageError(
            f"no terminal keys at {path}: start the demo (scripts/demo.sh) or pass --terminals"
        ) from None
    if name not in terminals:
        raise UsageError(f"no terminal {name!r} in {path} (has: {', '.join(terminals)})")
    return terminals[name]


def parse_item(text: str) -> flows.FeeLine:
    match = _ITEM.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not CODE:PRICE_IN_FEN[xQUANTITY]")
    qty = int(match["qty"] or 1)
    return flows.FeeLine(code=match["code"], unit_price=int(match["price"]), quantity=qty)


def _common(default_terminal: str) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--base-url", default=os.environ.get("CARDSVC_URL", "http://127.0.0.1:8080")
    )
    common.add_argument("--terminals", type=Path, default=DEFAULT_TERMINALS)
    common.add_argument("--terminal", default=default_terminal, help="name in --terminals")
    common.add_argument("--reader", help="PC/SC reader name (default: the first)")
    common.add_argument("--wait", type=float, default=30.0, help="seconds to wait for a card")
    common.add_argument("--outbox", type=Path, help="outbox file (default var/terminal/…)")
    return common


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cardsvc.terminal_sdk",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("readers", help="list PC/SC readers")
    sub.add_parser("read-card", parents=[_common("pos")], help="national-format basic info")
    issue = sub.add_parser("issue", parents=[_common("counter")], help="issue and personalise")
    issue.add_argument("--psn-no", required=True)
    issue.add_argument("--pin", help="the holder's first PIN (asked when omitted)")
    visit = sub.add_parser("visit", parents=[_common("pos")], help="a card-present visit")
    visit.add_argument("--item", type=parse_item, action="append", required=True)
    visit.add_argument("--pin", help="the holder's PIN (asked when omitted)")
    visit.add_argument("--insutype", default="310")
    visit.add_argument("--med-type", default="11")
    visit.add_argument("--mdtrt-id")
    visit.add_argument("--no-account", action="store_true", help="do not pay from the account")
    visit.add_argument("--injury-case-id")
    visit.add_argument("--delivery-type", choices=["normal", "cesarean"])
    kiosk = sub.add_parser("kiosk", parents=[_common("kiosk")], help="balance and history")
    kiosk.add_argument("--report-loss", action="store_true")
    reverse = sub.add_parser("reverse", parents=[_common("pos")], help="reverse a settlement")
    reverse.add_argument("--setl-id", required=True)
    reverse.add_argument("--reason", default="requested by facility")
    outbox = sub.add_parser("outbox", parents=[_common("pos")], help="show or drain the outbox")
    outbox.add_argument("--drain", action="store_true", help="deliver everything pending now")
    return parser


def progress(step: flows.Step, message: str) -> None:
    print(f"  · {step}: {message}", file=sys.stderr, flush=True)


def _pin_entry(given: str | None) -> Callable[[], str]:
    return (lambda: given) if given is not None else (lambda: getpass.getpass("PIN: "))


def _outbox_path(args: argparse.Namespace, terminal: TerminalConfig) -> Path:
    return args.outbox or Path("var/terminal") / f"{terminal.terminal_id}.outbox.sqlite3"


class Session:
    """What a command needs: the terminal's client, its reader and (for a POS) its outbox."""

    def __init__(
        self, args: argparse.Namespace, http: aiohttp.ClientSession, terminal: TerminalConfig
    ) -> None:
        self.args, self.terminal = args, terminal
        key = bytes.fromhex(terminal.terminal_key)
        self.client = TerminalClient(http, args.base_url, terminal.terminal_id, key)
        self.reader = CardReader(args.reader)
        self._outbox: Outbox | None = None

    def forwarder(self) -> Forwarder:
        if self._outbox is None:
            self._outbox = Outbox(_outbox_path(self.args, self.terminal))
        return Forwarder(self._outbox, self.client.request, self.terminal.terminal_id)

    def close(self) -> None:
        self.reader.close()
        if self._outbox is not None:
            self._outbox.close()


# ---------------------------------------------------------------------- commands
async def read_card(args: argparse.Namespace) -> None:
    """Needs no service: the terminal id is printed only when the terminal is configured."""
    terminal_no = ""
    if args.terminals.exists():
        terminal_no = load_terminal(args.terminals, args.terminal).terminal_id
    with CardReader(args.reader) as reader:
        info = await flows.present_card(reader, progress, args.wait)
        print(national_line(info, terminal_no, reader.name or ""))


async def cmd_issue(s: Session) -> None:
    pin = s.args.pin if s.args.pin is not None else getpass.getpass("new PIN (6 digits): ")
    result = await flows.issue(
        s.client, s.reader, s.args.psn_no, pin, progress=progress, wait=s.args.wait
    )
    print(f"card {result.card_no} ({result.card_sn}) for {result.psn_no}: {result.status}")


async def cmd_visit(s: Session) -> None:
    forwarder = s.forwarder()
    _print_drained(await forwarder.drain())
    order = flows.VisitOrder(
        feedetail=s.args.item,
        insutype=s.args.insutype,
        med_type=s.args.med_type,
        acct_used_flag=not s.args.no_account,
        injury_case_id=s.args.injury_case_id,
        delivery_type=s.args.delivery_type,
        **({"mdtrt_id": s.args.mdtrt_id} if s.args.mdtrt_id else {}),
    )
    result = await flows.visit(
        s.client,
        s.reader,
        forwarder,
        order,
        _pin_entry(s.args.pin),
        progress=progress,
        wait=s.args.wait,
    )
    _print_settlement(result.settlement)


def _print_settlement(setl: dict[str, Any]) -> None:
    y = flows.yuan
    print(f"settlement {setl['setl_id']} ({setl['status']}) at {setl['fixmedins_code']}")
    print(f"  total {y(setl['medfee_sumamt'])}  funds {y(setl['fund_pay_sumamt'])}", end="")
    print(f"  account {y(setl['acct_pay'])}  cash {y(setl['psn_cash_pay'])}")
    print(f"  account balance now {y(setl['balc'])}")


async def cmd_kiosk(s: Session) -> None:
    result = await flows.kiosk(
        s.client, s.reader, report_loss=s.args.report_loss, progress=progress, wait=s.args.wait
    )
    summary = result.summary
    if "balc" not in summary:  # a lost card shows its status and nothing else
        print(f"card {summary['card_no']} is {summary['card_status']}")
        return
    print(f"card {summary['card_no']} ({summary['card_status']}), {result.card.name}")
    print(f"  account balance {flows.yuan(summary['balc'])}")
    for setl in summary["settlements"]:
        print(
            f"  {setl['setl_time'][:16]}  {setl['setl_id']}  {setl['fixmedins_code']}"
            f"  {flows.yuan(setl['medfee_sumamt'])}  {setl['status']}"
        )
    if result.reported is not None:
        print(f"card {result.reported['card_no']} is now {result.reported['card_status']}")


async def cmd_reverse(s: Session) -> None:
    reversal = await s.forwarder().reverse(s.args.setl_id, s.args.reason)
    acct, fund = flows.yuan(reversal["acct_refund"]), flows.yuan(reversal["fund_refund"])
    print(f"reversal {reversal['reversal_id']} of {reversal['setl_id']}")
    print(f"  account refund {acct}  fund refund {fund}")


async def cmd_outbox(s: Session) -> None:
    forwarder = s.forwarder()
    if s.args.drain:
        _print_drained(await forwarder.drain(due_only=False))
    for entry in forwarder.outbox.entries():
        print(_entry_line(entry))


def _print_drained(entries: list[Entry]) -> None:
    for entry in entries:
        print(f"outbox: {_entry_line(entry)}", file=sys.stderr)


def _entry_line(entry: Entry) -> str:
    result = entry.result or {}
    outcome = result.get("reversal_id") or result.get("setl_id") or entry.error or ""
    return f"{entry.key}  {entry.kind:<7} {entry.status:<8} {entry.attempts} unanswered  {outcome}"


COMMANDS: dict[str, Callable[[Session], Awaitable[None]]] = {
    "issue": cmd_issue,
    "visit": cmd_visit,
    "kiosk": cmd_kiosk,
    "reverse": cmd_reverse,
    "outbox": cmd_outbox,
}


async def run(args: argparse.Namespace) -> int:
    if args.command == "read-card":
        await read_card(args)
        return 0
    terminal = load_terminal(args.terminals, args.terminal)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        session = Session(args, http, terminal)
        try:
            await COMMANDS[args.command](session)
        finally:
            session.close()
    return 0


# What a command reports in one line; anything else is a bug and keeps its traceback.
_EXPECTED = (
    UsageError,
    ValueError,
    CardError,
    TerminalError,
    SettlementPending,
    aiohttp.ClientError,
    OSError,
)


def _failure(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, SettlementPending):
        return EXIT_PENDING, f"pending: {exc}"
    if isinstance(exc, CardError):
        return EXIT_FAILED, f"card: {exc}"
    if isinstance(exc, TerminalError):
        return EXIT_FAILED, f"refused by cardsvc: {exc}"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return EXIT_FAILED, f"cannot reach cardsvc: {exc}"
    return EXIT_FAILED, str(exc)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging("console", os.environ.get("CARDSVC_LOG_LEVEL", "warning"))
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    if args.command == "readers":
        return _readers()
    try:
        return asyncio.run(run(args))
    except _EXPECTED as exc:
        code, message = _failure(exc)
        print(message, file=sys.stderr)
        return code


def _readers() -> int:
    try:
        names = list_readers()
    except CardError as exc:
        print(f"card: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(names) if names else "no readers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
