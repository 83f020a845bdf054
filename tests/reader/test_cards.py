"""The card through pcscd + vpcd + pyscard: personalisation from a real issuance, reading, the
PIN try counter, and which cryptograms the card will and will not produce."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cardcrypto import profile
from cardsvc.terminal_sdk import cardprofile as cp
from cardsvc.terminal_sdk import flows
from cardsvc.terminal_sdk.reader import (
    CardAlreadyPersonalised,
    CardNotPersonalised,
    ConditionsNotSatisfied,
    PinBlocked,
    SecurityNotSatisfied,
    WrongPin,
    national_line,
)
from cardsvc.vcard.card import ATR
from tests.reader.conftest import PIN, Desk, Slot, order

pytestmark = pytest.mark.asyncio(loop_scope="session")

WRONG = "000000"


async def test_blank_card_is_personalised_from_a_real_issuance(desk: Desk, slot: Slot):
    person = await desk.holder()
    issued = await desk.issue(slot, person["psn_no"])
    assert issued.status == "active" and issued.psn_no == person["psn_no"]

    reader = slot.connected()
    info = reader.read_card()
    assert (info.card_no, info.card_sn) == (issued.card_no, issued.card_sn)
    assert info.certno == person["certno_full"] and info.name == "张三"
    assert (info.admdvs, info.version, info.card_type, info.nationality) == (
        "320200",
        "3.00",
        "3",
        "CHN",
    )
    assert info.atr == ATR.hex().upper()
    assert reader.lifecycle() == cp.LIFECYCLE_LOCKED
    card = await desk.counter.call("GET", f"/v1/cards/{issued.card_no}")
    assert card["status"] == "active" and card["card_sn"] == info.card_sn
    line = national_line(info, "T1", reader.name or "")
    assert line.split("|") == [
        "320200",
        person["certno_full"],
        issued.card_no,
        issued.card_sn.upper(),
        "张三",
        ATR.hex().upper(),
        "3.00",
        info.issue_date,
        info.expiry_date,
        "T1",
        slot.reader_name,
        "",
    ]
    state_file = slot.blank_card(person["psn_no"]).path
    assert stat.S_IMODE(os.stat(state_file).st_mode) == 0o600


async def test_locked_card_refuses_personalisation_and_another_issuance(desk: Desk, slot: Slot):
    person = await desk.holder()
    await desk.issue(slot, person["psn_no"])
    reader = slot.connected()
    reader.select_ssse()
    with pytest.raises(ConditionsNotSatisfied) as refused:
        reader.command(cp.write_record(0x06, 0x09, b" " * 30), "WRITE RECORD")
    assert refused.value.sw == 0x6985
    reader.close()

    other = await desk.holder()
    with slot.reader() as writer, pytest.raises(CardAlreadyPersonalised):
        await flows.issue(desk.counter, writer, other["psn_no"], PIN, wait=5)
    # Refused before the service issued anything: the person can still get a card.
    await desk.issue(slot, other["psn_no"])


async def test_blank_card_cannot_be_read_as_an_issued_one(slot: Slot):
    slot.insert(slot.blank_card())
    reader = slot.connected()
    assert reader.lifecycle() == cp.LIFECYCLE_OPEN
    with pytest.raises(CardNotPersonalised):
        reader.read_card()
    reader.select_ssse()
    with pytest.raises(ConditionsNotSatisfied):  # an open card is not in the field yet
        reader.verify_pin(PIN)


async def test_wrong_pin_twice_then_right_resets_the_counter(desk: Desk, slot: Slot):
    person = await desk.holder()
    await desk.issue(slot, person["psn_no"])
    reader = slot.connected()
    reader.select_ssse()
    assert reader.pin_tries_left() == 3
    for left in (2, 1):
        with pytest.raises(WrongPin) as wrong:
            reader.verify_pin(WRONG)
        assert wrong.value.tries_left == left and wrong.value.sw == 0x63C0 | left
    reader.verify_pin(PIN)
    assert reader.pin_tries_left() == 3
    with pytest.raises(WrongPin) as wrong:
        reader.verify_pin(WRONG)
    assert wrong.value.tries_left == 2


async def test_three_wrong_pins_block_the_card_and_its_transaction_key(
    desk: Desk, slot: Slot, tmp_path: Path
):
    person = await desk.holder()
    issued = await desk.issue(slot, person["psn_no"])
    reader = slot.connected()
    reader.select_ssse()
    for _ in range(2):
        with pytest.raises(WrongPin):
            reader.verify_pin(WRONG)
    with pytest.raises(PinBlocked) as blocked:
        reader.verify_pin(WRONG)
    assert blocked.value.sw == 0x6983
    with pytest.raises(PinBlocked):
        reader.verify_pin(PIN)  # the right PIN no longer helps
    with pytest.raises(PinBlocked):
        reader.internal_authenticate(profile.KEY_REF_TXN, os.urandom(16))
    assert reader.pin_tries_left() == 0
    reader.close()

    # Not even a new power session brings it back, and the POS cannot get a cryptogram.
    with slot.reader() as pos_reader, pytest.raises(PinBlocked):
        await flows.visit(
            desk.pos,
            pos_reader,
            desk.forwarder(tmp_path / "outbox.sqlite3"),
            order(("A-AMOX", 1200, 1)),
            lambda: PIN,
            wait=5,
        )
    assert await desk.settlements_of(person["psn_no"]) == 0
    # Identification (K_auth, no PIN) still works: a kiosk can still recognise the card.
    seen = await flows.kiosk(desk.kiosk, slot.reader(), wait=5)
    assert seen.summary["card_no"] == issued.card_no


async def test_transaction_key_needs_verify_in_this_power_session(desk: Desk, slot: Slot):
    person = await desk.holder()
    await desk.issue(slot, person["psn_no"])
    reader = slot.connected()
    reader.select_ssse()
    challenge = os.urandom(16)
    with pytest.raises(SecurityNotSatisfied) as refused:
        reader.internal_authenticate(profile.KEY_REF_TXN, challenge)
    assert refused.value.sw == 0x6982
    assert len(reader.internal_authenticate(profile.KEY_REF_AUTH, challenge)) == 16
    reader.verify_pin(PIN)
    assert len(reader.internal_authenticate(profile.KEY_REF_TXN, challenge)) == 16
    reader.close()  # unpowers the card: the verified PIN is gone with the session

    again = slot.connected()
    again.select_ssse()
    with pytest.raises(SecurityNotSatisfied):
        again.internal_authenticate(profile.KEY_REF_TXN, challenge)


async def test_status_words_reach_the_sdk_unchanged(desk: Desk, slot: Slot):
    person = await desk.holder()
    await desk.issue(slot, person["psn_no"])
    reader = slot.connected()
    cases = [
        (bytes.fromhex("00A4040003A00000"), 0x6A82),  # another application
        (bytes.fromhex("00B2010000"), 0x6986),  # READ RECORD before a file is selected
        (bytes.fromhex("0012000000"), 0x6D00),
        (bytes.fromhex("A0B2010000"), 0x6E00),
    ]
    for command, sw in cases:
        assert reader.transmit(command)[1] == sw, command.hex()
    reader.select_ssse()
    reader.command(cp.select_file(cp.EF06), "SELECT EF06")
    assert reader.transmit(cp.read_record(0x0C))[1] == 0x6A83
    assert reader.transmit(cp.internal_authenticate(0x03, bytes(16)))[1] == 0x6A88
    assert len(reader.get_challenge(8)) == 8
