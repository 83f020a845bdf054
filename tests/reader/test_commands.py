"""The two commands as a user runs them: ``python -m cardsvc.vcard`` (a card that survives a
restart of the emulator) and ``python -m cardsvc.terminal_sdk`` (issue, read-card, visit, kiosk,
reverse), each a real process talking to the test pcscd and the running service."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardsvc.terminal_sdk import flows
from cardsvc.terminal_sdk.failures import Exit
from cardsvc.terminal_sdk.reader import WrongPin
from cardsvc.vcard.card import ATR
from cardsvc.vcard.state import load
from tests.reader.conftest import PIN, Desk, Slot
from tests.support.hsm import REPO_ROOT

pytestmark = pytest.mark.asyncio(loop_scope="session")


class VcardProcess:
    def __init__(self, port: int, state: Path) -> None:
        self.cmd = [
            sys.executable,
            "-m",
            "cardsvc.vcard",
            "--port",
            str(port),
            "--state",
            str(state),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        self.process = subprocess.Popen(
            [*self.cmd, *extra], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def vcard(slot2: Slot, tmp_path: Path) -> Iterator[VcardProcess]:
    process = VcardProcess(slot2.port, tmp_path / "card.json")
    yield process
    process.stop()


async def test_emulator_keeps_a_personalised_card_across_a_restart(
    desk: Desk, slot2: Slot, vcard: VcardProcess, tmp_path: Path
):
    vcard.start("--blank")
    person = await desk.holder()
    with slot2.reader() as writer:
        issued = await flows.issue(desk.counter, writer, person["psn_no"], PIN, wait=10)
    with slot2.connected(10) as reader:
        reader.select_ssse()
        with pytest.raises(WrongPin):
            reader.verify_pin("999999")
    vcard.stop()

    state_file = tmp_path / "card.json"
    assert stat.S_IMODE(os.stat(state_file).st_mode) == 0o600
    state = load(state_file)
    assert state.lifecycle == "locked" and state.pin_tries_left == 2

    vcard.start("--blank")  # the same command line: an existing card is kept, not blanked
    with slot2.connected(10) as reader:
        info = reader.read_card()
        assert (info.card_no, info.card_sn) == (issued.card_no, issued.card_sn)
        reader.select_ssse()
        assert reader.pin_tries_left() == 2


async def test_emulator_without_a_card_says_how_to_make_one(tmp_path: Path):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cardsvc.vcard",
        "--state",
        str(tmp_path / "missing.json"),
        cwd=REPO_ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 2 and b"--blank" in err


async def terminal_cli(*args: str) -> tuple[int, str, str]:
    # Awaited, never run blocking: the service under test shares this event loop.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cardsvc.terminal_sdk",
        *args,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_command_line_issue_read_visit_kiosk_reverse(desk: Desk, slot: Slot, tmp_path: Path):
    terminals = tmp_path / "terminals.json"
    terminals.write_text(
        json.dumps(
            {
                name: {
                    "terminal_id": client.terminal_id,
                    "terminal_key": client.terminal_key.hex(),
                    "kind": name,
                }
                for name, client in {
                    "counter": desk.counter,
                    "pos": desk.pos,
                    "kiosk": desk.kiosk,
                }.items()
            }
        )
    )
    common = [
        "--base-url",
        desk.service.base_url,
        "--terminals",
        str(terminals),
        "--reader",
        slot.reader_name,
        "--wait",
        "10",
        "--outbox",
        str(tmp_path / "outbox.sqlite3"),
    ]
    person = await desk.holder(balance=20000)
    slot.insert(slot.blank_card())

    code, out, err = await terminal_cli(
        "issue", "--psn-no", person["psn_no"], "--pin", PIN, *common
    )
    assert code == 0, err
    assert out.endswith(f"for {person['psn_no']}: active\n") and "card personalised" in err
    card_no = out.split()[1]

    code, out, err = await terminal_cli("read-card", *common)
    assert code == 0, err
    fields = out.rstrip("\n").split("|")
    assert fields[:3] == ["320200", person["certno_full"], card_no]
    assert fields[5] == ATR.hex().upper() and fields[9:] == [
        desk.pos.terminal_id,
        slot.reader_name,
        "",
    ]

    code, out, err = await terminal_cli(
        "visit", "--pin", PIN, "--item", "A-AMOX:12.00x2", "--item", "C-VIT:5", *common
    )
    assert code == 0, err
    assert "PIN verified on the card" in err and "settlement S" in out
    setl_id = out.split()[1]

    code, out, err = await terminal_cli("kiosk", *common, "--terminal", "kiosk")
    assert code == 0, err
    assert f"card {card_no} (active)" in out and setl_id in out

    code, out, err = await terminal_cli("reverse", "--setl-id", setl_id, *common)
    assert code == 0, err
    assert f"reversal R{setl_id[1:]} of {setl_id}" in out
    assert await desk.balance(person["psn_no"]) == 20000

    code, out, err = await terminal_cli("visit", "--pin", "000000", "--item", "A-AMOX:1", *common)
    assert code == Exit.WRONG_PIN and out == ""
    assert err.splitlines()[-1].startswith("wrong PIN: 2 tries left before the card blocks;")
    assert "re-enter the PIN" in err and "Traceback" not in err
