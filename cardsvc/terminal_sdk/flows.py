"""Card-present flows: issue and personalise at a counter, a visit at a POS, a kiosk look-up.

Each flow is a short sequence of awaited steps. The card is reached through ``CardReader`` in
a worker thread (pyscard blocks), the service through ``TerminalClient``, and every step is
reported to ``progress`` so a command line or UI can show it (and a test can act at a step).

- ``issue``: a blank card → ``POST /v1/cards`` → unseal the keys (K_term) → class-80
  personalisation and lock → read back, both keys and the PIN checked on the card →
  activate. If the card cannot be finished, the issued card is cancelled on the service, so
  the person can be issued another.
- ``visit``: the item codes in the catalog (before anything is asked of the holder) → read
  the card → PIN on the card (VERIFY) → card-auth ``transaction`` (K_txn) → preview → the
  same card still in the reader → settle through the outbox.
- ``kiosk``: read the card → card-auth ``identify`` (K_auth, no PIN) → summary (and
  optionally report it lost).
- ``busi_card``: what a national reader component gives an HIS: read the card → (PIN on
  the card →) card-auth ``identify`` without a PIN, ``transaction`` with one → the card
  token as ``busi_card_info``.
- ``unblock_pin``: counter: read the card → the holder's new PIN → card-auth ``identify``
  (works with a blocked PIN) → the card's GET CHALLENGE → ``POST .../pin-unblock`` → the
  issuer-MACed RESET RETRY COUNTER and at once CHANGE REFERENCE DATA with the new PIN (which
  never leaves the terminal) → VERIFY with it.
"""

from __future__ import annotations

import asyncio
import difflib
import enum
import hmac
import os
import secrets
from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from cardcrypto import profile
from cardsvc.cards.records import CardRecords
from cardsvc.money import yuan
from cardsvc.terminal_sdk import cardprofile
from cardsvc.terminal_sdk.client import TerminalClient, TerminalError
from cardsvc.terminal_sdk.outbox import Forwarder
from cardsvc.terminal_sdk.personalise import expected_values, personalisation_commands
from cardsvc.terminal_sdk.reader import (
    CardAlreadyPersonalised,
    CardDataError,
    CardInfo,
    CardReader,
)

log = structlog.get_logger("cardsvc.terminal_sdk")


class Step(enum.StrEnum):
    ITEMS_CHECKED = "items found in the catalog"
    WAITING_FOR_CARD = "waiting for a card"
    CARD_READ = "card read"
    BLANK_CARD = "blank card found"
    ISSUED = "card issued"
    PERSONALISED = "card personalised and locked"
    CHECKED = "card checked"
    ACTIVATED = "card activated"
    PIN_VERIFIED = "PIN verified on the card"
    CARD_AUTHENTICATED = "card authenticated"
    PREVIEWED = "pre-settled"
    SETTLING = "settling"
    SETTLED = "settled"
    SUMMARY = "summary"
    LOSS_REPORTED = "loss reported"
    UNBLOCK_AUTHORISED = "unblock authorised"
    PIN_UNBLOCKED = "PIN unblocked and changed on the card"


Progress = Callable[[Step, str], None]
PinEntry = Callable[[], str]


def quiet(step: Step, message: str) -> None:
    del step, message


class UnknownItems(Exception):
    """Item codes the catalog does not have (``codes``), with the closest known codes."""

    def __init__(self, codes: list[str], suggestions: dict[str, list[str]]) -> None:
        super().__init__(f"not in the catalog: {', '.join(codes)}")
        self.codes, self.suggestions = codes, suggestions


class FeeLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    code: str
    unit_price: int
    quantity: int


class VisitOrder(msgspec.Struct, frozen=True, kw_only=True):
    feedetail: list[FeeLine]
    insutype: str = "310"
    med_type: str = "11"
    mdtrt_id: str = msgspec.field(default_factory=lambda: "MD" + secrets.token_hex(8))
    acct_used_flag: bool = True
    injury_case_id: str | None = None
    delivery_type: str | None = None

    def request(self, card_token: str) -> dict[str, Any]:
        body: dict[str, Any] = msgspec.to_builtins(self)
        return {"card_token": card_token, **{k: v for k, v in body.items() if v is not None}}


class IssueResult(msgspec.Struct, frozen=True, kw_only=True):
    card_no: str
    card_sn: str
    psn_no: str
    status: str


class VisitResult(msgspec.Struct, frozen=True, kw_only=True):
    card: CardInfo
    preview: dict[str, Any]
    settlement: dict[str, Any]


class BusiCard(msgspec.Struct, frozen=True, kw_only=True):
    """A card authenticated for an HIS: ``busi_card_info`` is the card token (a bearer
    secret for a few minutes: hand it to the HIS, never log it)."""

    info: CardInfo
    purpose: str
    busi_card_info: str

    def busi_card_info_line(self) -> str:
        """``card_no|busi_card_info``: the national interface's ``mdtrt_cert_no`` for ``03``."""
        return f"{self.info.card_no}|{self.busi_card_info}"


class UnblockResult(msgspec.Struct, frozen=True, kw_only=True):
    card: CardInfo
    tries_before: int  # 0: the PIN was blocked; more: a forgotten PIN reset


class KioskResult(msgspec.Struct, frozen=True, kw_only=True):
    card: CardInfo
    summary: dict[str, Any]
    reported: dict[str, Any] | None = None


# ---------------------------------------------------------------------- shared steps
async def present_card(reader: CardReader, progress: Progress, wait: float) -> CardInfo:
    progress(Step.WAITING_FOR_CARD, f"insert a card ({wait:g} s)")
    await asyncio.to_thread(reader.wait_for_card, wait)
    info = await asyncio.to_thread(reader.read_card)
    progress(Step.CARD_READ, f"card {info.card_no}, holder {info.masked_certno}")
    return info


async def authenticate_card(
    client: TerminalClient, reader: CardReader, info: CardInfo, purpose: str
) -> dict[str, Any]:
    """The service's challenge, answered by the card's INTERNAL AUTHENTICATE."""
    challenge = await client.call(
        "POST", "/v1/card-auth/challenge", {"card_no": info.card_no, "purpose": purpose}
    )
    cryptogram = await asyncio.to_thread(
        reader.internal_authenticate,
        int(challenge["key_ref"], 16),
        bytes.fromhex(challenge["challenge"]),
    )
    verified: dict[str, Any] = await client.call(
        "POST",
        "/v1/card-auth/verify",
        {"auth_id": challenge["auth_id"], "card_sn": info.card_sn, "cryptogram": cryptogram.hex()},
    )
    return verified


CODES_PER_REQUEST = 100  # the service's bound on ``code`` in one catalog request
_SUGGESTIONS_FROM = 1000  # codes with the same first letter looked at for "did you mean"


async def check_items(client: TerminalClient, codes: list[str]) -> None:
    """Every code is in the catalog (``GET /v1/catalog/items``, up to ``CODES_PER_REQUEST``
    codes a request), else ``UnknownItems``."""
    wanted = sorted(set(codes))
    found: set[str] = set()
    for start in range(0, len(wanted), CODES_PER_REQUEST):
        batch = wanted[start : start + CODES_PER_REQUEST]
        query = "&".join(f"code={code}" for code in batch)
        page = await client.call("GET", f"/v1/catalog/items?{query}&limit={len(batch)}")
        found |= {item["code"] for item in page["items"]}
    unknown = [code for code in wanted if code not in found]
    if unknown:
        suggestions = {code: await _close_codes(client, code) for code in unknown}
        raise UnknownItems(unknown, suggestions)


async def _close_codes(client: TerminalClient, code: str) -> list[str]:
    page = await client.call("GET", f"/v1/catalog/items?prefix={code[0]}&limit={_SUGGESTIONS_FROM}")
    known = [item["code"] for item in page["items"]]
    return difflib.get_close_matches(code, known, n=3, cutoff=0.6)


# ---------------------------------------------------------------------- counter
async def issue(
    client: TerminalClient,
    reader: CardReader,
    psn_no: str,
    pin: str,
    *,
    progress: Progress = quiet,
    wait: float = 30.0,
) -> IssueResult:
    cardprofile.pin_to_bcd(pin)  # a bad PIN must not cost an issued card
    progress(Step.WAITING_FOR_CARD, f"insert a blank card ({wait:g} s)")
    await asyncio.to_thread(reader.wait_for_card, wait)
    if await asyncio.to_thread(reader.lifecycle) != cardprofile.LIFECYCLE_OPEN:
        raise CardAlreadyPersonalised("this card is already personalised: insert a blank card")
    progress(Step.BLANK_CARD, "blank card in the writer")
    issued: dict[str, Any] = await client.call("POST", "/v1/cards", {"psn_no": psn_no})
    progress(Step.ISSUED, f"card {issued['card_no']} issued to {psn_no}")
    try:
        await _personalise(client, reader, issued, pin, progress)
    except Exception:
        await _cancel_issued(client, issued["card_no"])
        raise
    card = await client.call("POST", f"/v1/cards/{issued['card_no']}/activate")
    progress(Step.ACTIVATED, f"card {card['card_no']} is {card['status']}")
    log.info("card issued", card_no=card["card_no"])
    return msgspec.convert(card, IssueResult)


async def _personalise(
    client: TerminalClient,
    reader: CardReader,
    issued: dict[str, Any],
    pin: str,
    progress: Progress,
) -> None:
    records = msgspec.convert(issued["records"], CardRecords)
    # The blob opens only with this counter's K_term: the service never saw these keys.
    k_auth, k_txn = profile.unseal_card_keys(
        client.terminal_key, issued["card_sn"], issued["personalization_blob"]
    )
    commands = personalisation_commands(records, k_auth, k_txn, pin)
    await asyncio.to_thread(_write, reader, commands)
    progress(Step.PERSONALISED, f"{len(commands)} commands, card locked")
    await asyncio.to_thread(_check, reader, records, (k_auth, k_txn), pin)
    progress(Step.CHECKED, "records read back, K_auth, PIN and K_txn answer correctly")


def _write(reader: CardReader, commands: list[bytes]) -> None:
    for command in commands:
        reader.command(command, f"personalisation {command[1]:02X}")


def _check(reader: CardReader, records: CardRecords, keys: tuple[bytes, bytes], pin: str) -> None:
    if reader.read_records() != expected_values(records):
        raise CardDataError("the card does not read back what was written")
    reader.verify_pin(pin)
    for key_ref, key in zip((profile.KEY_REF_AUTH, profile.KEY_REF_TXN), keys, strict=True):
        challenge = os.urandom(profile.CHALLENGE_LEN)
        answer = reader.internal_authenticate(key_ref, challenge)
        if not hmac.compare_digest(answer, profile.card_cryptogram(key, challenge)):
            raise CardDataError(f"key {key_ref:02X} on the card is not the issued one")


async def _cancel_issued(client: TerminalClient, card_no: str) -> None:
    try:
        await client.call("POST", f"/v1/cards/{card_no}/cancel")
    except (TerminalError, OSError) as exc:  # keep the original failure as the one raised
        log.warning("could not cancel an unfinished card", card_no=card_no, error=str(exc))
    else:
        log.info("unfinished card cancelled", card_no=card_no)


async def unblock_pin(
    client: TerminalClient,
    reader: CardReader,
    new_pin: PinEntry,
    *,
    progress: Progress = quiet,
    wait: float = 30.0,
) -> UnblockResult:
    """Unblock (or reset a forgotten) PIN with the card in this counter's reader."""
    info = await present_card(reader, progress, wait)
    tries_before = await asyncio.to_thread(reader.pin_tries_left)
    pin = new_pin()  # before anything is spent: a mistyped PIN costs no authorisation
    cardprofile.pin_to_bcd(pin)
    auth = await authenticate_card(client, reader, info, "identify")
    progress(Step.CARD_AUTHENTICATED, f"card {auth['card_no']} is {auth['card_status']}")
    card_challenge = await asyncio.to_thread(reader.get_challenge, profile.CARD_CHALLENGE_LEN)
    unblock: dict[str, Any] = await client.call(
        "POST",
        f"/v1/cards/{info.card_no}/pin-unblock",
        {"card_token": auth["card_token"], "card_challenge": card_challenge.hex()},
    )
    progress(Step.UNBLOCK_AUTHORISED, "the issuer's RESET RETRY COUNTER for this card")
    await asyncio.to_thread(_reset_and_set, reader, bytes.fromhex(unblock["command"]), pin)
    progress(Step.PIN_UNBLOCKED, "the new PIN is verified on the card")
    log.info("pin unblocked", card_no=info.card_no)
    return UnblockResult(card=info, tries_before=tries_before)


def _reset_and_set(reader: CardReader, command: bytes, pin: str) -> None:
    # Back to back: the card takes the new PIN only as the command right after the reset.
    reader.reset_retry_counter(command)
    reader.change_pin_after_unblock(pin)
    reader.verify_pin(pin)


# ---------------------------------------------------------------------- POS
async def visit(
    client: TerminalClient,
    reader: CardReader,
    forwarder: Forwarder,
    order: VisitOrder,
    pin: PinEntry,
    *,
    progress: Progress = quiet,
    wait: float = 30.0,
) -> VisitResult:
    await check_items(client, [line.code for line in order.feedetail])
    progress(
        Step.ITEMS_CHECKED, ", ".join(f"{line.code} ×{line.quantity}" for line in order.feedetail)
    )
    info = await present_card(reader, progress, wait)
    await asyncio.to_thread(reader.verify_pin, pin())
    progress(Step.PIN_VERIFIED, "the holder's PIN was accepted by the card")
    auth = await authenticate_card(client, reader, info, "transaction")
    progress(Step.CARD_AUTHENTICATED, _insured(auth))
    body = order.request(auth["card_token"])
    preview: dict[str, Any] = await client.call("POST", "/v1/settlements/preview", body)
    progress(Step.PREVIEWED, _amounts(preview))
    # The holder confirmed with this card: it must still be the one in the reader.
    await asyncio.to_thread(reader.ensure_card, info.card_sn)
    progress(Step.SETTLING, "sending the settlement (kept in the outbox until answered)")
    settlement = await forwarder.settle(body)
    progress(Step.SETTLED, f"{settlement['setl_id']}: {_amounts(settlement)}")
    log.info("visit settled", setl_id=settlement["setl_id"], card_no=info.card_no)
    return VisitResult(card=info, preview=preview, settlement=settlement)


def _insured(auth: dict[str, Any]) -> str:
    schemes = ", ".join(
        f"{i['insutype']} (balance {yuan(i['balc'])})" if i["balc"] else i["insutype"]
        for i in auth.get("insuinfo", [])
    )
    return f"{auth['baseinfo']['psn_no']} insured: {schemes or 'none active'}"


def _amounts(setl: dict[str, Any]) -> str:
    return (
        f"total {yuan(setl['medfee_sumamt'])}, funds {yuan(setl['fund_pay_sumamt'])}, "
        f"account {yuan(setl['acct_pay'])}, cash {yuan(setl['psn_cash_pay'])}"
    )


# ---------------------------------------------------------------------- kiosk
async def kiosk(
    client: TerminalClient,
    reader: CardReader,
    *,
    report_loss: bool = False,
    progress: Progress = quiet,
    wait: float = 30.0,
) -> KioskResult:
    info = await present_card(reader, progress, wait)
    auth = await authenticate_card(client, reader, info, "identify")
    progress(Step.CARD_AUTHENTICATED, f"card {auth['card_no']} is {auth['card_status']}")
    token = {"card_token": auth["card_token"]}
    summary: dict[str, Any] = await client.call("POST", "/v1/kiosk/summary", token)
    if "balc" in summary:  # only an active card shows its holder's part
        recent = len(summary["settlements"])
        progress(Step.SUMMARY, f"balance {yuan(summary['balc'])}, {recent} recent")
    else:
        progress(Step.SUMMARY, f"card {summary['card_no']} is {summary['card_status']}")
    reported = None
    if report_loss:
        reported = await client.call("POST", "/v1/kiosk/report-loss", token)
        progress(Step.LOSS_REPORTED, f"card {reported['card_no']} is {reported['card_status']}")
    return KioskResult(card=info, summary=summary, reported=reported)


# ---------------------------------------------------------------------- HIS card component
async def busi_card(
    client: TerminalClient,
    reader: CardReader,
    pin: str | None,
    *,
    progress: Progress = quiet,
    wait: float = 30.0,
) -> BusiCard:
    """Card authentication for an HIS: ``identify`` without a PIN, ``transaction`` (K_txn,
    after VERIFY) with one, so the token can pay for one settlement (2207/2304)."""
    info = await present_card(reader, progress, wait)
    purpose = "identify"
    if pin is not None:
        await asyncio.to_thread(reader.verify_pin, pin)
        progress(Step.PIN_VERIFIED, "the holder's PIN was accepted by the card")
        purpose = "transaction"
    auth = await authenticate_card(client, reader, info, purpose)
    progress(Step.CARD_AUTHENTICATED, f"card {auth['card_no']} ({purpose})")
    return BusiCard(info=info, purpose=purpose, busi_card_info=auth["card_token"])
