"""What went wrong, for the person at the terminal: one line in their words, what to do
next, and an exit status of its own (docs/readers.md, Command line). Pure.

``explain(exc, Context(...))`` turns any failure of a terminal command (the card, the reader,
the service, the outbox) into a ``Failure``; nothing reaches the user as a traceback.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec

from cardsvc.terminal_sdk.client import ServerNotAuthenticated, TerminalError
from cardsvc.terminal_sdk.flows import UnknownItems
from cardsvc.terminal_sdk.outbox import SettlementPending
from cardsvc.terminal_sdk.reader import (
    CardAlreadyPersonalised,
    CardDataError,
    CardError,
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


class Exit(enum.IntEnum):
    """The command's exit status: one per kind of outcome a script or a till may act on."""

    DONE = 0
    REFUSED = 1  # the service refused the request (its reason is shown)
    USAGE = 2  # the command line, the terminal's configuration or an item code is wrong
    PENDING = 3  # sent, not answered yet: kept in the outbox, which will finish it
    SERVICE_UNREACHABLE = 4  # no answer from the service (or not our service): nothing done
    READER_UNAVAILABLE = 5  # no PC/SC service, no such reader, or another program holds it
    CARD_PROBLEM = 6  # no card, card taken out or swapped, blank, or unreadable
    WRONG_PIN = 7  # the card refused the PIN; tries are left
    PIN_BLOCKED = 8  # the card's PIN is blocked
    CARD_AUTH_EXPIRED = 9  # the card's one-time authorisation expired or was used: start again
    INTERRUPTED = 130  # stopped with Ctrl-C
    FAULT = 70  # a fault in the terminal software itself


class Failure(msgspec.Struct, frozen=True):
    exit: Exit
    message: str


class UsageError(Exception):
    """Bad input on the command line or in the terminal's configuration."""


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """Where the failure happened: the command, the service's address, the card wait, and
    the command that finishes what the outbox holds."""

    command: str
    base_url: str = ""
    wait: float = 30.0
    drain_command: str = "python -m cardsvc.terminal_sdk outbox --drain"


# A visit writes nothing until the settlement is sent; any failure before is harmless.
_NOTHING_CHARGED = {"visit": "nothing was charged; "}
_CARD_AUTH_AGAIN = frozenset(
    {"CARD_TOKEN_INVALID", "CARD_TOKEN_USED", "CARD_TOKEN_PURPOSE", "CARD_CHALLENGE_INVALID"}
)
_TERMINAL_NOT_ACCEPTED = frozenset(
    {
        "TERMINAL_NOT_FOUND",
        "CRYPTOGRAM_INVALID",
        "CHALLENGE_INVALID",
        "SESSION_INVALID",
        "SIGNATURE_INVALID",
        "SIGNATURE_MISSING",
        "SIGNATURE_HEADER_INVALID",
        "NONCE_INVALID",
        "TIMESTAMP_INVALID",
        "TERMINAL_REKEY_REQUIRED",
    }
)


def explain(exc: BaseException, ctx: Context) -> Failure:
    for kinds, describe in _EXPLAINERS:
        if isinstance(exc, kinds):
            return describe(exc, ctx)
    return Failure(
        Exit.FAULT,
        f"unexpected fault in the terminal software ({type(exc).__name__}: {exc}): note the"
        " time and call support; if a payment was being sent, run"
        f" `{ctx.drain_command}` before taking cash",
    )


def _pending(exc: SettlementPending, ctx: Context) -> Failure:
    if exc.kind == "reverse":
        return Failure(
            Exit.PENDING,
            f"the reversal is not confirmed yet ({exc.reason}): do not refund cash yet; the"
            f" outbox will finish it — run `{ctx.drain_command}` once the service answers",
        )
    return Failure(
        Exit.PENDING,
        f"the payment is not confirmed yet ({exc.reason}): do not take cash yet; the outbox"
        f" will finish it — run `{ctx.drain_command}` once the service answers (key {exc.key})",
    )


def _unknown_items(exc: UnknownItems, ctx: Context) -> Failure:
    parts = []
    for code in exc.codes:
        close = exc.suggestions.get(code) or []
        parts.append(f"{code} (did you mean {' or '.join(close)}?)" if close else code)
    return Failure(
        Exit.USAGE,
        f"not in the catalog: {', '.join(parts)}: check the item code and run the visit again"
        " (the PIN was not asked for)",
    )


def _unreachable(exc: BaseException, ctx: Context) -> Failure:
    return Failure(
        Exit.SERVICE_UNREACHABLE,
        f"cannot reach the card service at {ctx.base_url} ({_no_answer(exc)}):"
        f" {_NOTHING_CHARGED.get(ctx.command, '')}check the network and that the service is"
        " up, then run the command again",
    )


def _no_answer(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno = exc.os_error.errno
        return os.strerror(errno).lower() if errno else "cannot connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "it closed the connection"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}{': ' + str(exc) if str(exc) else ''}"


def _not_our_service(exc: ServerNotAuthenticated, ctx: Context) -> Failure:
    return Failure(
        Exit.SERVICE_UNREACHABLE,
        f"the server at {ctx.base_url} could not prove it is this terminal's card service:"
        " do not use it; call the administrator",
    )


def _refused(exc: TerminalError, ctx: Context) -> Failure:
    charged = _NOTHING_CHARGED.get(ctx.command, "")
    said = f"({exc.code}{': ' + exc.message if exc.message else ''})"
    if exc.code in _CARD_AUTH_AGAIN:
        return Failure(
            Exit.CARD_AUTH_EXPIRED,
            f"the card's authorisation expired or was already used {said}: {charged}"
            "leave the card in the reader and run the command again",
        )
    if exc.code == "UNKNOWN_ITEM":
        codes = exc.details.get("codes") or []
        return _unknown_items(UnknownItems([str(c) for c in codes], {}), ctx)
    if exc.code in _TERMINAL_NOT_ACCEPTED or exc.code == "TIMESTAMP_OUT_OF_WINDOW":
        clock = " (is this computer's clock right?)" if "TIMESTAMP" in exc.code else ""
        return Failure(
            Exit.REFUSED,
            f"the card service does not accept this terminal {said}{clock}: check --terminals"
            " and --terminal, or ask the administrator",
        )
    if exc.status >= 500 or exc.code == "RATE_LIMITED":
        return Failure(
            Exit.SERVICE_UNREACHABLE,
            f"the card service is busy or unavailable {said}: {charged}wait a minute and"
            " run the command again",
        )
    return Failure(
        Exit.REFUSED, f"refused by the card service {said}: {charged}{_advice(exc, ctx)}"
    )


def _advice(exc: TerminalError, ctx: Context) -> str:
    details: dict[str, Any] = exc.details
    if ctx.command == "unblock-pin" and exc.code in ("CARD_NOT_ACTIVE", "CARD_EXPIRED"):
        status = str(details.get("status", "expired"))
        found = " (if the holder found it, cancel the loss report first)"
        return (
            f"this card is {status.replace('_', ' ')}: its PIN cannot be unblocked; replace the"
            f" card instead{found if status == 'loss_reported' else ''}"
        )
    if exc.code == "CARD_NOT_ACTIVE":
        status = str(details.get("status", "not active")).replace("_", " ")
        return f"this card is {status} and cannot pay; send the holder to a card service counter"
    if exc.code in ("CARD_EXPIRED", "CARD_NOT_FOUND", "CARD_CRYPTOGRAM_INVALID", "CARD_MISMATCH"):
        return "do not accept this card; send the holder to a card service counter"
    if exc.code in ("INSURANCE_NOT_ACTIVE", "PSN_TYPE_NOT_ALLOWED"):
        return "the holder is not insured for this; check --insutype, or the visit is self-paid"
    if exc.code in ("TERMINAL_DISABLED", "FACILITY_SUSPENDED", "FACILITY_NOT_ALLOWED"):
        return "this terminal may not do this now; call the insurance office"
    return "check the request; the reason above says what to change"


def _wrong_pin(exc: WrongPin, ctx: Context) -> Failure:
    left = exc.tries_left
    if left == 0:
        return _pin_blocked(exc, ctx)
    tries = "1 try" if left == 1 else f"{left} tries"
    return Failure(
        Exit.WRONG_PIN,
        f"wrong PIN: {tries} left before the card blocks; {_NOTHING_CHARGED.get(ctx.command, '')}"
        "ask the holder to re-enter the PIN (run the command again)",
    )


def _pin_blocked(exc: CardError, ctx: Context) -> Failure:
    return Failure(
        Exit.PIN_BLOCKED,
        "the card's PIN is blocked after too many wrong PINs: the card cannot pay; the holder"
        " must have the PIN unblocked at a card service counter, with the card (unblock-pin)",
    )


def _reader(exc: CardError, ctx: Context) -> Failure:
    if isinstance(exc, ReaderBusy):
        text = "the card reader is in use by another program: close it and run the command again"
    else:
        text = (
            f"the card reader is not available ({exc}): check that it is plugged in and that"
            " pcscd is running; `python -m cardsvc.terminal_sdk readers` lists the readers"
        )
    return Failure(Exit.READER_UNAVAILABLE, text)


_REMOVED = {
    "visit": "the card was taken out before the payment was finished: nothing was charged;"
    " put the card back and run the visit again",
    "issue": "the card was taken out while it was being written: its card number was"
    " cancelled; put a new blank card in the writer and issue again",
    "unblock-pin": "the card was taken out before its new PIN was set: put it back and run"
    " the command again (if the unblock reached the card, its old PIN has 3 tries again)",
}


def _card(exc: CardError, ctx: Context) -> Failure:
    charged = _NOTHING_CHARGED.get(ctx.command, "")
    if isinstance(exc, CardRemoved):
        text = _REMOVED.get(
            ctx.command, "the card was taken out too early: put it back and run the command again"
        )
    elif isinstance(exc, NoCard):
        text = (
            f"no card in the reader within {ctx.wait:g} s: insert the card and run the"
            " command again"
        )
    elif isinstance(exc, CardMismatch):
        text = (
            f"another card is in the reader than the one this began with: {charged}put the"
            " holder's card back and run the command again"
        )
    elif isinstance(exc, CardNotPersonalised):
        text = "this card is blank (never issued): it cannot be used; use the holder's own card"
    elif isinstance(exc, CardAlreadyPersonalised):
        text = "this card is already issued: put a blank card in the writer"
    elif isinstance(exc, CardStatusError) and exc.command == "RESET RETRY COUNTER":
        text = (
            f"the card refused the PIN unblock ({exc}): nothing was changed; leave the card in"
            " the reader and run the command again; if it happens again, replace the card"
        )
    elif isinstance(exc, CardStatusError) and exc.command == "CHANGE REFERENCE DATA":
        text = (
            f"the card took the unblock but not the new PIN ({exc}): its old PIN has 3 tries"
            " again; run the command again to set a new one"
        )
    elif isinstance(exc, CardDataError):
        text = (
            f"the card could not be read correctly ({exc}): {charged}take it out, put it back"
            " and try again; if it happens again, send the holder to a card service counter"
        )
    else:
        text = (
            f"the card refused ({exc}): {charged}take it out, put it back and try again;"
            " if it happens again, send the holder to a card service counter"
        )
    return Failure(Exit.CARD_PROBLEM, text)


def _usage(exc: BaseException, ctx: Context) -> Failure:
    return Failure(Exit.USAGE, str(exc))


def _local_file(exc: BaseException, ctx: Context) -> Failure:
    return Failure(
        Exit.USAGE,
        f"cannot use a local file ({exc}): check the paths given to --terminals and --outbox"
        " and that this user may write there",
    )


def _interrupted(exc: BaseException, ctx: Context) -> Failure:
    return Failure(
        Exit.INTERRUPTED,
        f"stopped: if a payment was being sent it is kept in the outbox; run `{ctx.drain_command}`"
        " before taking cash",
    )


Explainer = Callable[[Any, Context], Failure]
_EXPLAINERS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], Explainer], ...] = (
    (SettlementPending, _pending),
    (UnknownItems, _unknown_items),
    (UsageError, _usage),
    (ServerNotAuthenticated, _not_our_service),
    (TerminalError, _refused),
    (WrongPin, _wrong_pin),
    (PinBlocked, _pin_blocked),
    ((ReaderUnavailable, ReaderBusy), _reader),
    (CardError, _card),
    ((aiohttp.ClientError, TimeoutError, ConnectionError), _unreachable),
    (OSError, _local_file),
    (KeyboardInterrupt, _interrupted),
)
