"""PIN unblock at a counter: the real service and hsm_stub, and a virtual card answering the
APDUs the service prepares (docs/protocol.md, PIN unblock)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import msgspec
import pytest

from cardcrypto import profile
from cardsvc.cards.records import CardRecords
from cardsvc.terminal_sdk import cardprofile as cp
from cardsvc.terminal_sdk.client import TerminalClient
from cardsvc.vcard.card import VirtualCard, personalised_state
from tests.support.api import Service

pytestmark = pytest.mark.asyncio(loop_scope="session")

PIN, NEW_PIN = "123456", "654321"


class Card:
    """An issued card in a reader: APDUs in, ``(data, sw)`` out."""

    def __init__(self, issued: dict[str, Any], k_term: bytes) -> None:
        self.card_no, self.card_sn = issued["card_no"], issued["card_sn"]
        k_auth, k_txn = profile.unseal_card_keys(
            k_term, issued["card_sn"], issued["personalization_blob"]
        )
        records = msgspec.convert(issued["records"], CardRecords)
        self.chip = VirtualCard(personalised_state(records, k_auth, k_txn, PIN))
        self.power_cycle()

    def power_cycle(self) -> None:
        self.chip.reset()
        assert self.send(cp.select_ssse())[1] == cp.SW_OK

    def send(self, apdu: bytes) -> tuple[bytes, int]:
        answer = self.chip.process(apdu)
        return answer[:-2], int.from_bytes(answer[-2:], "big")

    def verify(self, pin: str) -> int:
        return self.send(cp.verify(pin))[1]

    def block(self) -> None:
        assert [self.verify(wrong) for wrong in ("000000", "111111", "222222")] == [
            0x63C2,
            0x63C1,
            cp.SW_PIN_BLOCKED,
        ]

    def challenge(self) -> str:
        data, sw = self.send(cp.get_challenge(profile.CARD_CHALLENGE_LEN))
        assert sw == cp.SW_OK
        return data.hex()


async def issue(service: Service, counter: TerminalClient) -> Card:
    person = await service.person()
    issued = await counter.call("POST", "/v1/cards", {"psn_no": person["psn_no"]})
    await counter.call("POST", f"/v1/cards/{issued['card_no']}/activate")
    return Card(issued, counter.terminal_key)


async def identify(terminal: TerminalClient, card: Card) -> str:
    """Card authentication without a PIN (K_auth): what works with a blocked PIN."""
    ch = await terminal.call(
        "POST", "/v1/card-auth/challenge", {"card_no": card.card_no, "purpose": "identify"}
    )
    cryptogram, sw = card.send(
        cp.internal_authenticate(profile.KEY_REF_AUTH, bytes.fromhex(ch["challenge"]))
    )
    assert sw == cp.SW_OK
    verified = await terminal.call(
        "POST",
        "/v1/card-auth/verify",
        {"auth_id": ch["auth_id"], "card_sn": card.card_sn, "cryptogram": cryptogram.hex()},
    )
    token: str = verified["card_token"]
    return token


async def ask_unblock(
    terminal: TerminalClient, card_no: str, token: str, challenge: str
) -> tuple[int, Any]:
    resp = await terminal.request(
        "POST",
        f"/v1/cards/{card_no}/pin-unblock",
        {"card_token": token, "card_challenge": challenge},
    )
    return resp.status, resp.body


def error_code(body: Any) -> str:
    code: str = body["error"]["code"]
    return code


async def unblock_entries(service: Service, card_no: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(service.database_url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT actor, data FROM audit_log WHERE action = 'card.pin_unblocked'"
            " AND object_id = $1",
            card_no,
        )
        return rows
    finally:
        await conn.close()


async def test_blocked_pin_is_unblocked_at_the_counter_and_the_new_pin_works(service: Service):
    counter = await service.terminal("counter")
    card = await issue(service, counter)
    card.block()
    assert card.verify(PIN) == cp.SW_PIN_BLOCKED

    token = await identify(counter, card)
    status, body = await ask_unblock(counter, card.card_no, token, card.challenge())
    assert status == 200, body
    command = bytes.fromhex(body["command"])
    assert command[:7] == bytes.fromhex("0c2c03000a8e08") and len(command) == 15
    assert card.send(command)[1] == cp.SW_OK
    # The holder's new PIN goes from the reader to the card, never to the service.
    assert card.send(cp.change_pin_after_unblock(NEW_PIN))[1] == cp.SW_OK
    assert card.verify(NEW_PIN) == cp.SW_OK
    card.power_cycle()
    assert card.verify(PIN) == 0x63C2  # the old PIN is gone

    # The new PIN opens K_txn: the card can pay again.
    card.power_cycle()
    assert card.verify(NEW_PIN) == cp.SW_OK
    ch = await counter.call(
        "POST", "/v1/card-auth/challenge", {"card_no": card.card_no, "purpose": "transaction"}
    )
    cryptogram, sw = card.send(
        cp.internal_authenticate(profile.KEY_REF_TXN, bytes.fromhex(ch["challenge"]))
    )
    assert sw == cp.SW_OK
    verified = await counter.call(
        "POST",
        "/v1/card-auth/verify",
        {"auth_id": ch["auth_id"], "card_sn": card.card_sn, "cryptogram": cryptogram.hex()},
    )
    assert verified["purpose"] == "transaction"

    (entry,) = await unblock_entries(service, card.card_no)
    assert entry["actor"] == f"terminal:{counter.terminal_id}"
    assert counter.terminal_id in entry["data"]
    assert NEW_PIN not in entry["data"] and token not in entry["data"]


async def test_a_replayed_command_and_a_spent_token_are_refused(service: Service):
    counter = await service.terminal("counter")
    card = await issue(service, counter)
    card.block()
    token = await identify(counter, card)
    status, body = await ask_unblock(counter, card.card_no, token, card.challenge())
    assert status == 200
    command = bytes.fromhex(body["command"])
    assert card.send(command)[1] == cp.SW_OK
    assert card.send(cp.change_pin_after_unblock(NEW_PIN))[1] == cp.SW_OK
    card.block()

    # The same command again: the card's challenge was used up (and a new one differs).
    assert card.send(command)[1] == cp.SW_SECURITY_NOT_SATISFIED
    card.challenge()
    assert card.send(command)[1] == cp.SW_SECURITY_NOT_SATISFIED
    assert card.send(cp.change_pin_after_unblock("111111"))[1] == cp.SW_SECURITY_NOT_SATISFIED
    assert card.verify(NEW_PIN) == cp.SW_PIN_BLOCKED

    # The same card authentication again: one unblock per authentication.
    status, body = await ask_unblock(counter, card.card_no, token, card.challenge())
    assert (status, error_code(body)) == (409, "CARD_TOKEN_USED")
    assert len(await unblock_entries(service, card.card_no)) == 1


async def test_another_cards_command_or_token_is_refused(service: Service):
    counter = await service.terminal("counter")
    card, other = await issue(service, counter), await issue(service, counter)
    card.block()
    other.block()
    token = await identify(counter, other)

    # The other card's token for this card's number.
    status, body = await ask_unblock(counter, card.card_no, token, card.challenge())
    assert (status, error_code(body)) == (401, "CARD_MISMATCH")

    # The other card's command, made with this card's challenge, sent to this card.
    challenge = card.challenge()
    status, body = await ask_unblock(counter, other.card_no, token, challenge)
    assert status == 200
    assert card.send(bytes.fromhex(body["command"]))[1] == cp.SW_SECURITY_NOT_SATISFIED
    assert card.verify(PIN) == cp.SW_PIN_BLOCKED


async def test_only_the_counter_session_that_authenticated_the_card(service: Service):
    facility = await service.facility()
    counter = await service.terminal("counter")
    other_counter = await service.terminal("counter")
    pos = await service.terminal("pos", facility["fixmedins_code"])
    card = await issue(service, counter)
    card.block()

    status, body = await ask_unblock(
        other_counter, card.card_no, await identify(counter, card), card.challenge()
    )
    assert (status, error_code(body)) == (401, "CARD_TOKEN_INVALID")

    status, body = await ask_unblock(pos, card.card_no, await identify(pos, card), card.challenge())
    assert (status, error_code(body)) == (403, "TERMINAL_KIND_NOT_ALLOWED")
    assert await unblock_entries(service, card.card_no) == []


async def test_a_lost_or_expired_card_gets_no_new_pin(service: Service):
    counter = await service.terminal("counter")
    card = await issue(service, counter)
    card.block()
    token = await identify(counter, card)  # a lost card still identifies itself
    await counter.call("POST", f"/v1/cards/{card.card_no}/report-loss")
    status, body = await ask_unblock(counter, card.card_no, token, card.challenge())
    assert (status, error_code(body)) == (422, "CARD_NOT_ACTIVE")
    assert body["error"]["details"]["status"] == "loss_reported"

    await counter.call("POST", f"/v1/cards/{card.card_no}/cancel-loss")
    token = await identify(counter, card)
    conn = await asyncpg.connect(service.database_url)
    try:
        await conn.execute(
            "UPDATE cards SET expiry_date = $2 WHERE card_no = $1",
            card.card_no,
            dt.date.today() - dt.timedelta(days=3),
        )
    finally:
        await conn.close()
    status, body = await ask_unblock(counter, card.card_no, token, card.challenge())
    assert (status, error_code(body)) == (422, "CARD_EXPIRED")


async def test_a_pin_that_is_not_blocked_can_be_reset_the_same_way(service: Service):
    """Forgotten PIN: the holder is at the counter with the card, authenticated the same way."""
    counter = await service.terminal("counter")
    card = await issue(service, counter)
    assert card.verify("000000") == 0x63C2
    token = await identify(counter, card)
    status, body = await ask_unblock(counter, card.card_no, token, card.challenge())
    assert status == 200
    assert card.send(bytes.fromhex(body["command"]))[1] == cp.SW_OK
    assert card.send(cp.change_pin_after_unblock(NEW_PIN))[1] == cp.SW_OK
    assert card.verify(NEW_PIN) == cp.SW_OK


@pytest.mark.parametrize(
    "body",
    [
        {"card_token": "x", "card_challenge": "00" * 7},
        {"card_token": "x", "card_challenge": "zz" * 8},
        {"card_token": "", "card_challenge": "00" * 8},
        {"card_token": "x", "card_challenge": "00" * 8, "new_pin": "123456"},
    ],
    ids=["short challenge", "not hex", "empty token", "a PIN is never sent"],
)
async def test_malformed_requests_are_refused(service: Service, body: dict[str, str]):
    counter = await service.terminal("counter")
    resp = await counter.request("POST", "/v1/cards/A00000001/pin-unblock", body)
    assert resp.status == 400, resp.body
