"""PIN unblock end to end: a virtual card behind the real pcscd and vpcd, the counter's
reader SDK and command line, the running service and hsm_stub."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from cardcrypto import profile
from cardsvc.terminal_sdk import flows
from cardsvc.terminal_sdk.client import TerminalClient, TerminalError
from cardsvc.terminal_sdk.failures import Exit
from cardsvc.terminal_sdk.reader import CardReader, PinBlocked, SecurityNotSatisfied, WrongPin
from tests.reader.conftest import PIN, Desk, Slot
from tests.reader.test_commands import terminal_cli
from tests.support.hsm import REPO_ROOT

pytestmark = pytest.mark.asyncio(loop_scope="session")

NEW_PIN = "246810"


def block(reader: CardReader) -> None:
    reader.select_ssse()
    for _ in range(2):
        with pytest.raises(WrongPin):
            reader.verify_pin("000000")
    with pytest.raises(PinBlocked):
        reader.verify_pin("000000")


async def test_blocked_card_is_unblocked_at_the_counter_and_pays_with_the_new_pin(
    desk: Desk, slot: Slot, tmp_path: Path
):
    person = await desk.holder()
    issued = await desk.issue(slot, person["psn_no"])
    with slot.connected() as reader:
        block(reader)

    with slot.reader() as reader:
        result = await flows.unblock_pin(desk.counter, reader, lambda: NEW_PIN, wait=5)
    assert result.card.card_no == issued.card_no and result.tries_before == 0

    with slot.reader() as pos_reader:
        visit = await flows.visit(
            desk.pos,
            pos_reader,
            desk.forwarder(tmp_path / "outbox.sqlite3"),
            flows.VisitOrder(feedetail=[flows.FeeLine(code="A-AMOX", unit_price=1200, quantity=1)]),
            lambda: NEW_PIN,
            wait=5,
        )
    assert visit.settlement["setl_id"]
    with slot.connected() as reader:
        reader.select_ssse()
        with pytest.raises(WrongPin):
            reader.verify_pin(PIN)  # the old PIN is gone


async def test_a_replayed_command_and_another_cards_command_are_refused_by_the_card(
    desk: Desk, slot: Slot, slot2: Slot
):
    first = await desk.holder()
    second = await desk.holder()
    one = await desk.issue(slot, first["psn_no"])
    two = await desk.issue(slot2, second["psn_no"])
    with slot.connected() as reader_one, slot2.connected() as reader_two:
        block(reader_one)
        block(reader_two)
        info = reader_one.read_card()
        auth = await flows.authenticate_card(desk.counter, reader_one, info, "identify")
        challenge = reader_one.get_challenge(profile.CARD_CHALLENGE_LEN)
        unblock = await desk.counter.call(
            "POST",
            f"/v1/cards/{one.card_no}/pin-unblock",
            {"card_token": auth["card_token"], "card_challenge": challenge.hex()},
        )
        command = bytes.fromhex(unblock["command"])

        # Card one's command, made for card one's challenge, is no use to card two.
        reader_two.get_challenge(profile.CARD_CHALLENGE_LEN)
        with pytest.raises(SecurityNotSatisfied):
            reader_two.reset_retry_counter(command)
        assert reader_two.pin_tries_left() == 0

        reader_one.reset_retry_counter(command)
        reader_one.change_pin_after_unblock(NEW_PIN)
        reader_one.verify_pin(NEW_PIN)
        block(reader_one)
        # Replayed, after a fresh challenge: the MAC covers the old one.
        reader_one.get_challenge(profile.CARD_CHALLENGE_LEN)
        with pytest.raises(SecurityNotSatisfied):
            reader_one.reset_retry_counter(command)
        assert reader_one.pin_tries_left() == 0

        # And the service gives no second command for the same card authentication.
        with pytest.raises(TerminalError) as refused:
            await desk.counter.call(
                "POST",
                f"/v1/cards/{one.card_no}/pin-unblock",
                {"card_token": auth["card_token"], "card_challenge": challenge.hex()},
            )
        assert refused.value.code == "CARD_TOKEN_USED"
    assert two.card_no != one.card_no


async def test_a_pos_cannot_unblock(desk: Desk, slot: Slot):
    person = await desk.holder()
    await desk.issue(slot, person["psn_no"])
    with slot.reader() as reader, pytest.raises(TerminalError) as refused:
        await flows.unblock_pin(desk.pos, reader, lambda: NEW_PIN, wait=5)
    assert refused.value.code == "TERMINAL_KIND_NOT_ALLOWED"


def terminals_file(tmp_path: Path, counter: TerminalClient, pos: TerminalClient) -> Path:
    path = tmp_path / "terminals.json"
    entries = {"counter": counter, "pos": pos}
    path.write_text(
        json.dumps(
            {
                name: {
                    "terminal_id": c.terminal_id,
                    "terminal_key": c.terminal_key.hex(),
                    "kind": name,
                }
                for name, c in entries.items()
            }
        )
    )
    return path


async def test_command_line_unblock_pin(desk: Desk, slot: Slot, tmp_path: Path):
    person = await desk.holder()
    issued = await desk.issue(slot, person["psn_no"])
    common = [
        "--base-url",
        desk.service.base_url,
        "--terminals",
        str(terminals_file(tmp_path, desk.counter, desk.pos)),
        "--reader",
        slot.reader_name,
        "--wait",
        "10",
    ]
    with slot.connected() as reader:
        block(reader)

    code, out, err = await terminal_cli("unblock-pin", "--new-pin", NEW_PIN, *common)
    assert code == 0, err
    assert out == f"card {issued.card_no}: PIN was blocked; the new PIN is set (3 tries)\n"
    assert "unblock authorised" in err and "PIN unblocked and changed on the card" in err

    code, out, err = await terminal_cli(
        "unblock-pin", "--new-pin", NEW_PIN, "--terminal", "pos", *common
    )
    assert code == Exit.REFUSED and out == ""
    assert "TERMINAL_KIND_NOT_ALLOWED" in err.splitlines()[-1]

    # Without --new-pin and no terminal to type it at: a clear usage error, nothing spent.
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "cardsvc.terminal_sdk", "unblock-pin", *common),
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # no controlling terminal: getpass reads the empty stdin
    )
    out_b, err_b = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == Exit.USAGE and out_b == b""
    assert "no PIN was entered" in err_b.decode()
    with slot.connected() as reader:
        reader.select_ssse()
        reader.verify_pin(NEW_PIN)
