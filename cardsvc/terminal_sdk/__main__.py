"""``python -m cardsvc.terminal_sdk COMMAND``: a terminal on the command line (docs/readers.md).

    readers                       the PC/SC readers pcscd lists
    read-card [--busi [--pin P]]  the card's basic info in the national reader format;
                                  --busi also authenticates the card (a PIN: for a payment)
    issue --psn-no N [--pin P]    counter: issue, personalise a blank card, activate
    unblock-pin [--new-pin P]     counter: unblock (or reset a forgotten) PIN, card present
    visit --item CODE:YUAN[xQTY]… POS: items checked, card, PIN, card-auth, preview, settle
    kiosk [--report-loss]         kiosk: card-auth (no PIN), balance and recent settlements
    reverse --setl-id S           POS: reverse a settlement (via the outbox)
    outbox [--drain]              POS: what the outbox holds; deliver what is due

``--item A-AMOX:12.00x2`` is the item code, the unit price in yuan (at most 2 decimals) and
the quantity (default 1). Terminal identities (id and K_term) come from ``--terminals`` (the
demo's ``var/demo/terminals.json``), by name with ``--terminal``. Progress goes to stderr,
results to stdout; times are shown in Asia/Shanghai. A failure is one line on stderr saying
what to do, and its exit status says which: 0 done, 1 refused by the service, 2 usage (or
an item code not in the catalog), 3 payment or reversal pending in the outbox, 4 service
unreachable, 5 reader unavailable, 6 card problem (none, taken out, swapped, blank,
unreadable), 7 wrong PIN, 8 PIN blocked, 9 card authorisation expired or used, 70 fault,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import structlog

from cardsvc.logging import configure_logging
from cardsvc.money import parse_yuan, yuan
from cardsvc.terminal_sdk import flows
from cardsvc.terminal_sdk.client import TerminalClient
from cardsvc.terminal_sdk.display import local_time
from cardsvc.terminal_sdk.failures import Context, Exit, UsageError, explain
from cardsvc.terminal_sdk.outbox import Entry, Forwarder, Outbox
from cardsvc.terminal_sdk.reader import CardReader, list_readers, national_line

DEFAULT_TERMINALS = Path("var/demo/terminals.json")
DEFAULT_URL = "http://127.0.0.1:8080"
_ITEM = re.compile(r"(?P<code>[A-Za-z0-9._-]{1,50}):(?P<price>[0-9.]+)(?:x(?P<qty>[0-9]{1,6}))?")
_PIN = re.compile(r"[0-9]{6}")
MAX_UNIT_PRICE = 10_000_000_000  # fen: the service's bound on a unit price
MAX_QUANTITY = 100_000


class TerminalConfig(msgspec.Struct, frozen=True):
    terminal_id: str
    terminal_key: str
    kind: str
    fixmedins_code: str | None = None


def load_terminal(path: Path, name: str) -> TerminalConfig:
    try:
        terminals = msgspec.json.decode(path.read_bytes(), type=dict[str, TerminalConfig])
    except FileNotFoundError:
        raise UsageError(
            f"no terminal keys at {path}: start the demo (scripts/demo.sh) or pass --terminals"
        ) from None
    except msgspec.DecodeError as exc:
        raise UsageError(f"{path} is not a terminals file ({exc}): check --terminals") from None
    if name not in terminals:
        raise UsageError(f"no terminal {name!r} in {path} (has: {', '.join(terminals)})")
    terminal = terminals[name]
    if not re.fullmatch(r"[0-9a-fA-F]{32}", terminal.terminal_key):
        raise UsageError(f"terminal {name!r} in {path} has no valid key (32 hex digits)")
    return terminal


def parse_item(text: str) -> flows.FeeLine:
    """``CODE:YUAN[xQUANTITY]``, e.g. ``A-AMOX:12.00x2``: the price exactly, in fen."""
    match = _ITEM.fullmatch(text)
    usage = f"{text!r} is not CODE:PRICE_IN_YUAN[xQUANTITY] (like A-AMOX:12.00x2)"
    if match is None:
        raise argparse.ArgumentTypeError(usage)
    try:
        price = parse_yuan(match["price"])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{usage}: at most 2 decimals") from None
    qty = int(match["qty"] or 1)
    if price > MAX_UNIT_PRICE:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the unit price is above {yuan(MAX_UNIT_PRICE)}"
        )
    if not 1 <= qty <= MAX_QUANTITY:
        raise argparse.ArgumentTypeError(f"{text!r}: the quantity must be 1 to {MAX_QUANTITY:,}")
    return flows.FeeLine(code=match["code"], unit_price=price, quantity=qty)


def parse_pin(text: str) -> str:
    if not _PIN.fullmatch(text):
        raise argparse.ArgumentTypeError("a PIN is 6 digits")
    return text


def _common(default_terminal: str) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base-url", default=os.environ.get("CARDSVC_URL", DEFAULT_URL))
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
    read_card = sub.add_parser(
        "read-card", parents=[_common("pos")], help="national-format basic info"
    )
    read_card.add_argument(
        "--busi",
        action="store_true",
        help="authenticate the card and print card_no|busi_card_info as a second line",
    )
    read_card.add_argument(
        "--pin",
        type=parse_pin,
        help="with --busi: the holder's PIN, for a card token that can pay (transaction)",
    )
    issue = sub.add_parser("issue", parents=[_common("counter")], help="issue and personalise")
    issue.add_argument("--psn-no", required=True)
    issue.add_argument("--pin", type=parse_pin, help="the holder's first PIN (asked when omitted)")
    unblock = sub.add_parser(
        "unblock-pin", parents=[_common("counter")], help="unblock a PIN, card present"
    )
    unblock.add_argument(
        "--new-pin", type=parse_pin, help="the holder's new PIN (asked twice when omitted)"
    )
    visit = sub.add_parser("visit", parents=[_common("pos")], help="a card-present visit")
    visit.add_argument(
        "--item",
        type=parse_item,
        action="append",
        required=True,
        metavar="CODE:YUAN[xQTY]",
        help="an item: code, unit price in yuan, quantity (A-AMOX:12.00x2); repeat per item",
    )
    visit.add_argument("--pin", type=parse_pin, help="the holder's PIN (asked when omitted)")
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


def _pin_entry(given: str | None, prompt: str = "PIN: ") -> Callable[[], str]:
    def ask() -> str:
        if given is not None:
            return given
        try:
            entered = getpass.getpass(prompt)
        except EOFError:
            raise UsageError("no PIN was entered: pass --pin, or run in a terminal") from None
        if not _PIN.fullmatch(entered):
            raise UsageError("a PIN is 6 digits: run the command again and re-enter it")
        return entered

    return ask


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
    if args.pin is not None and not args.busi:
        raise UsageError("--pin is for --busi: add --busi to authenticate the card")
    if args.busi:
        await read_card_busi(args)
        return
    terminal_no = ""
    if args.terminals.exists():
        terminal_no = load_terminal(args.terminals, args.terminal).terminal_id
    with CardReader(args.reader) as reader:
        info = await flows.present_card(reader, progress, args.wait)
        print(national_line(info, terminal_no, reader.name or ""))


async def read_card_busi(args: argparse.Namespace) -> None:
    """What a national reader component returns: the basic-info line, then
    ``card_no|busi_card_info`` (the card token of card authentication by this terminal)."""
    terminal = load_terminal(args.terminals, args.terminal)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        session = Session(args, http, terminal)
        try:
            card = await flows.busi_card(
                session.client,
                session.reader,
                args.pin,
                progress=progress,
                wait=args.wait,
            )
            reader_name = session.reader.name or ""
        finally:
            session.close()
    print(national_line(card.info, terminal.terminal_id, reader_name))
    print(card.busi_card_info_line())


async def cmd_issue(s: Session) -> None:
    pin = _pin_entry(s.args.pin, "new PIN (6 digits): ")()
    result = await flows.issue(
        s.client, s.reader, s.args.psn_no, pin, progress=progress, wait=s.args.wait
    )
    print(f"card {result.card_no} ({result.card_sn}) for {result.psn_no}: {result.status}")


def _new_pin_entry(given: str | None) -> Callable[[], str]:
    """The new PIN: as given, or typed twice by the holder at the terminal."""
    first, again = _pin_entry(None, "new PIN (6 digits): "), _pin_entry(None, "new PIN again: ")

    def ask() -> str:
        if given is not None:
            return given
        pin = first()
        if again() != pin:
            raise UsageError("the two new PINs differ: nothing was changed; run the command again")
        return pin

    return ask


async def cmd_unblock_pin(s: Session) -> None:
    result = await flows.unblock_pin(
        s.client, s.reader, _new_pin_entry(s.args.new_pin), progress=progress, wait=s.args.wait
    )
    was = "was blocked" if result.tries_before == 0 else "was not blocked: reset"
    print(f"card {result.card.card_no}: PIN {was}; the new PIN is set (3 tries)")


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
    y = yuan
    print(f"settlement {setl['setl_id']} ({setl['status']}) at {setl['fixmedins_code']}")
    print(f"  time {local_time(setl['setl_time'])}")
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
    print(f"  account balance {yuan(summary['balc'])}")
    for setl in summary["settlements"]:
        print(
            f"  {local_time(setl['setl_time'])}  {setl['setl_id']}  {setl['fixmedins_code']}"
            f"  {yuan(setl['medfee_sumamt'])}  {setl['status']}"
        )
    if result.reported is not None:
        print(f"card {result.reported['card_no']} is now {result.reported['card_status']}")


async def cmd_reverse(s: Session) -> None:
    reversal = await s.forwarder().reverse(s.args.setl_id, s.args.reason)
    acct, fund = yuan(reversal["acct_refund"]), yuan(reversal["fund_refund"])
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
        print(f"outbox: {drained_outcome(entry)}", file=sys.stderr)


def drained_outcome(entry: Entry) -> str:
    """What a delivered outbox entry means for the money, in words."""
    result = entry.result or {}
    if entry.status == "pending":
        return (
            f"{entry.key} still has no answer ({entry.error}): do not take cash or refund yet;"
            " it is tried again at the next visit or drain"
        )
    if entry.status == "stuck":
        return f"{entry.key} could not be delivered ({entry.error}): call the administrator"
    if entry.kind == "settle" and entry.status == "done":
        return (
            f"payment {result.get('setl_id')} is confirmed: the holder pays"
            f" {yuan(int(result.get('psn_cash_pay', 0)))} in cash"
        )
    if entry.kind == "settle":
        return (
            f"payment {entry.key} was not made ({entry.error}): nothing was charged; run the"
            " visit again"
        )
    if entry.kind == "void":
        return f"payment {entry.key} was never made: nothing was charged; run the visit again"
    if entry.status == "done" and entry.key.startswith("reverse:"):
        return f"reversal of {result.get('setl_id')} is confirmed: refund the holder's cash"
    if entry.status == "done":
        return (
            f"payment {result.get('setl_id')} could not be confirmed in time and was reversed:"
            " nothing was charged; run the visit again"
        )
    return f"reversal {entry.key} was refused ({entry.error}): call the administrator"


def _entry_line(entry: Entry) -> str:
    result = entry.result or {}
    outcome = result.get("reversal_id") or result.get("setl_id") or entry.error or ""
    return (
        f"{local_time(entry.created_at)}  {entry.key}  {entry.kind:<7} {entry.status:<8}"
        f" {entry.attempts} unanswered  {outcome}"
    )


COMMANDS: dict[str, Callable[[Session], Awaitable[None]]] = {
    "issue": cmd_issue,
    "unblock-pin": cmd_unblock_pin,
    "visit": cmd_visit,
    "kiosk": cmd_kiosk,
    "reverse": cmd_reverse,
    "outbox": cmd_outbox,
}


async def run(args: argparse.Namespace) -> int:
    if args.command == "read-card":
        await read_card(args)
        return Exit.DONE
    terminal = load_terminal(args.terminals, args.terminal)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        session = Session(args, http, terminal)
        try:
            await COMMANDS[args.command](session)
        finally:
            session.close()
    return Exit.DONE


def drain_command(args: argparse.Namespace) -> str:
    """The command that finishes what this terminal's outbox holds, with its options."""
    words = ["python -m cardsvc.terminal_sdk outbox --drain"]
    if args.base_url != DEFAULT_URL:
        words.append(f"--base-url {args.base_url}")
    if args.terminals != DEFAULT_TERMINALS:
        words.append(f"--terminals {args.terminals}")
    if args.terminal != "pos":
        words.append(f"--terminal {args.terminal}")
    if args.outbox is not None:
        words.append(f"--outbox {args.outbox}")
    return " ".join(words)


def _context(args: argparse.Namespace) -> Context:
    return Context(
        command=args.command,
        base_url=args.base_url,
        wait=args.wait,
        drain_command=drain_command(args),
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging("console", os.environ.get("CARDSVC_LOG_LEVEL", "warning"))
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    if args.command == "readers":
        return _readers()
    try:
        return asyncio.run(run(args))
    except (Exception, KeyboardInterrupt) as exc:  # every failure is one line, never a trace
        failure = explain(exc, _context(args))
        if failure.exit == Exit.FAULT and os.environ.get("CARDSVC_LOG_LEVEL") == "debug":
            traceback.print_exc()
        print(failure.message, file=sys.stderr)
        return failure.exit


def _readers() -> int:
    try:
        names = list_readers()
    except Exception as exc:
        failure = explain(exc, Context(command="readers"))
        print(failure.message, file=sys.stderr)
        return failure.exit
    print("\n".join(names) if names else "no readers")
    return Exit.DONE


if __name__ == "__main__":
    sys.exit(main())
