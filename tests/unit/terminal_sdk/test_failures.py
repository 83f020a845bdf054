"""Every failure of a terminal command is one line in the pharmacist's words, with what to
do, and an exit status of its own: a table of failures and what the terminal says."""

from __future__ import annotations

import aiohttp
import pytest

from cardsvc.terminal_sdk.client import ServerNotAuthenticated, TerminalError
from cardsvc.terminal_sdk.failures import Context, Exit, UsageError, explain
from cardsvc.terminal_sdk.flows import UnknownItems
from cardsvc.terminal_sdk.outbox import SettlementPending
from cardsvc.terminal_sdk.reader import (
    CardAlreadyPersonalised,
    CardDataError,
    CardMismatch,
    CardNotPersonalised,
    CardRemoved,
    CardStatusError,
    NoCard,
    PinBlocked,
    ReaderBusy,
    ReaderUnavailable,
    WrongPin,
)

VISIT = Context(
    command="visit",
    base_url="http://cardsvc:8080",
    wait=20,
    drain_command="python -m cardsvc.terminal_sdk outbox --drain --terminal pos2",
)
DRAIN = "`python -m cardsvc.terminal_sdk outbox --drain --terminal pos2`"

CASES = [
    (WrongPin(0x63C2, "VERIFY"), Exit.WRONG_PIN, ["wrong PIN: 2 tries left", "re-enter"]),
    (WrongPin(0x63C1, "VERIFY"), Exit.WRONG_PIN, ["1 try left", "nothing was charged"]),
    (WrongPin(0x63C0, "VERIFY"), Exit.PIN_BLOCKED, ["PIN is blocked"]),
    (PinBlocked(0x6983, "VERIFY"), Exit.PIN_BLOCKED, ["PIN is blocked", "counter"]),
    (CardRemoved("x"), Exit.CARD_PROBLEM, ["taken out", "nothing was charged", "put the card"]),
    (NoCard("x"), Exit.CARD_PROBLEM, ["no card in the reader within 20 s", "insert"]),
    (CardMismatch("x"), Exit.CARD_PROBLEM, ["another card", "holder's card back"]),
    (CardNotPersonalised("x"), Exit.CARD_PROBLEM, ["blank"]),
    (CardAlreadyPersonalised("x"), Exit.CARD_PROBLEM, ["already issued"]),
    (CardDataError("bad record"), Exit.CARD_PROBLEM, ["could not be read", "bad record"]),
    (CardStatusError(0x6F00, "SELECT"), Exit.CARD_PROBLEM, ["card refused", "6F00"]),
    (ReaderUnavailable("no reader 'R'"), Exit.READER_UNAVAILABLE, ["reader", "pcscd"]),
    (ReaderBusy("x"), Exit.READER_UNAVAILABLE, ["another program"]),
    (
        SettlementPending("IKabc", "ServerDisconnectedError"),
        Exit.PENDING,
        ["payment is not confirmed", "do not take cash yet", "outbox will finish it", DRAIN],
    ),
    (
        SettlementPending("reverse:S1", "HTTP 503", kind="reverse"),
        Exit.PENDING,
        ["reversal is not confirmed", "do not refund cash yet", DRAIN],
    ),
    (
        UnknownItems(["A-AMOK"], {"A-AMOK": ["A-AMOX"]}),
        Exit.USAGE,
        ["not in the catalog: A-AMOK (did you mean A-AMOX?)", "PIN was not asked"],
    ),
    (
        TerminalError(422, "UNKNOWN_ITEM", "not in the catalog", {"codes": ["Z-1"]}),
        Exit.USAGE,
        ["not in the catalog: Z-1"],
    ),
    (
        aiohttp.ServerDisconnectedError(),
        Exit.SERVICE_UNREACHABLE,
        ["cannot reach the card service at http://cardsvc:8080", "nothing was charged"],
    ),
    (TimeoutError(), Exit.SERVICE_UNREACHABLE, ["no answer in time"]),
    (ConnectionResetError(104, "reset"), Exit.SERVICE_UNREACHABLE, ["cannot reach"]),
    (ServerNotAuthenticated("x"), Exit.SERVICE_UNREACHABLE, ["could not prove", "do not use"]),
    (
        TerminalError(401, "CARD_TOKEN_USED", "the card token was used", {}),
        Exit.CARD_AUTH_EXPIRED,
        ["expired or was already used", "CARD_TOKEN_USED", "run the command again"],
    ),
    (
        TerminalError(401, "CARD_TOKEN_INVALID", "unknown or expired card token", {}),
        Exit.CARD_AUTH_EXPIRED,
        ["expired or was already used"],
    ),
    (
        TerminalError(422, "CARD_NOT_ACTIVE", "card is not active", {"status": "loss_reported"}),
        Exit.REFUSED,
        ["this card is loss reported and cannot pay", "card service counter"],
    ),
    (
        TerminalError(401, "TIMESTAMP_OUT_OF_WINDOW", "", {}),
        Exit.REFUSED,
        ["does not accept this terminal", "clock"],
    ),
    (
        TerminalError(503, "DATABASE_UNAVAILABLE", "the database is unavailable", {}),
        Exit.SERVICE_UNREACHABLE,
        ["busy or unavailable", "nothing was charged"],
    ),
    (
        TerminalError(422, "MATERNITY_LIMIT", "above the maternity limit", {}),
        Exit.REFUSED,
        ["refused by the card service (MATERNITY_LIMIT: above the maternity limit)"],
    ),
    (UsageError("a PIN is 6 digits"), Exit.USAGE, ["a PIN is 6 digits"]),
    (PermissionError(13, "Permission denied"), Exit.USAGE, ["local file", "--outbox"]),
    (KeyboardInterrupt(), Exit.INTERRUPTED, ["stopped", DRAIN]),
    (RuntimeError("boom"), Exit.FAULT, ["fault in the terminal software", "boom"]),
]


@pytest.mark.parametrize(("exc", "exit", "says"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_each_failure_is_one_line_with_what_to_do(exc: BaseException, exit: Exit, says):
    failure = explain(exc, VISIT)
    assert failure.exit == exit
    assert "\n" not in failure.message and "Traceback" not in failure.message
    for words in says:
        assert words in failure.message


def test_a_card_taken_out_while_issuing_says_the_number_was_cancelled():
    failure = explain(CardRemoved("x"), Context(command="issue"))
    assert failure.exit == Exit.CARD_PROBLEM and "cancelled" in failure.message
    assert (
        "charged"
        not in explain(aiohttp.ServerDisconnectedError(), Context(command="kiosk")).message
    )


def test_exit_statuses_are_distinct():
    assert len({int(e) for e in Exit}) == len(Exit)


UNBLOCK = Context(command="unblock-pin")
UNBLOCK_CASES = [
    (
        CardStatusError(0x6982, "RESET RETRY COUNTER"),
        Exit.CARD_PROBLEM,
        ["refused the PIN unblock", "nothing was changed", "run the command again"],
    ),
    (
        CardStatusError(0x6A80, "CHANGE REFERENCE DATA"),
        Exit.CARD_PROBLEM,
        ["not the new PIN", "old PIN has 3 tries again"],
    ),
    (CardRemoved("x"), Exit.CARD_PROBLEM, ["before its new PIN was set", "put it back"]),
    (
        TerminalError(422, "CARD_NOT_ACTIVE", "card is loss_reported", {"status": "loss_reported"}),
        Exit.REFUSED,
        ["loss reported", "cannot be unblocked", "replace the card", "cancel the loss report"],
    ),
    (
        TerminalError(422, "CARD_EXPIRED", "card expired", {"expiry_date": "2026-01-01"}),
        Exit.REFUSED,
        ["cannot be unblocked", "replace the card"],
    ),
    (
        TerminalError(409, "CARD_TOKEN_USED", "already gave a PIN unblock", {}),
        Exit.CARD_AUTH_EXPIRED,
        ["leave the card in the reader and run the command again"],
    ),
]


@pytest.mark.parametrize(
    ("exc", "exit", "says"), UNBLOCK_CASES, ids=[str(c[0])[:40] for c in UNBLOCK_CASES]
)
def test_each_unblock_failure_says_what_happened_to_the_pin(
    exc: BaseException, exit: Exit, says: list[str]
):
    failure = explain(exc, UNBLOCK)
    assert failure.exit == exit
    assert "\n" not in failure.message
    for words in says:
        assert words in failure.message, failure.message


def test_a_blocked_pin_points_to_the_counters_unblock():
    assert "unblock-pin" in explain(PinBlocked(0x6983, "VERIFY"), VISIT).message
