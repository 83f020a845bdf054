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
from urllib.parse import urlsplit

import pytest

from cardsvc.terminal_sdk import flows
from cardsvc.terminal_sdk.client import TerminalClient
from cardsvc.terminal_sdk.display import local_time
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
        "visit", "--pin", PIN, "--item", "A-AMOX:12.00x2", "--item", "C-VIT:5.00", *common
    )
    assert code == 0, err
    assert "PIN verified on the card" in err and "settlement S" in out
    assert "  total ¥29.00  " in out  # 2 × ¥12.00 + ¥5.00
    setl_id = out.split()[1]

    settled = await desk.pos.call("GET", f"/v1/settlements/{setl_id}")
    shown = local_time(settled["setl_time"])  # in Asia/Shanghai, with the offset
    assert f"  time {shown}\n" in out and shown.endswith(" +08:00")

    code, out, err = await terminal_cli("kiosk", *common, "--terminal", "kiosk")
    assert code == 0, err
    assert f"card {card_no} (active)" in out
    assert f"  {shown}  {setl_id}  " in out

    code, out, err = await terminal_cli("reverse", "--setl-id", setl_id, *common)
    assert code == 0, err
    assert f"reversal R{setl_id[1:]} of {setl_id}" in out
    assert await desk.balance(person["psn_no"]) == 20000

    code, out, err = await terminal_cli("visit", "--pin", "000000", "--item", "A-AMOX:1", *common)
    assert code == Exit.WRONG_PIN and out == ""
    assert err.splitlines()[-1].startswith("wrong PIN: 2 tries left before the card blocks;")
    assert "re-enter the PIN" in err and "Traceback" not in err


# ---------------------------------------------------------------------- failures, as said
class Relay:
    """The network between the terminal and the service, which the test can cut: a TCP
    relay that, when it sees ``cut_at`` in a request, drops it unsent (or, with
    ``after_request``, lets it through and drops its answer), closes every connection and
    stops listening, as a service gone away (or its cable pulled) would."""

    def __init__(self, base_url: str, cut_at: bytes, *, after_request: bool = False) -> None:
        target = urlsplit(base_url)
        self._host, self._port = target.hostname or "127.0.0.1", target.port or 80
        self._cut_at, self._cut = cut_at, False
        self._after_request, self._armed = after_request, False
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.base_url = ""

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.base_url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()

    def cut(self) -> None:
        self._cut = True
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter):
        upstream_r, upstream_w = await asyncio.open_connection(self._host, self._port)
        self._writers += [client_w, upstream_w]
        await asyncio.gather(
            self._pipe(client_r, upstream_w, watch=True), self._pipe(upstream_r, client_w)
        )

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, watch=False):
        try:
            while data := await src.read(65536):
                if self._armed and not watch:  # the answer to it: lost with the service
                    self.cut()
                if watch and self._cut_at in data:
                    self._armed = self._after_request
                    if not self._armed:
                        self.cut()
                if self._cut:
                    return
                dst.write(data)
                await dst.drain()
        except ConnectionError:
            pass
        finally:
            dst.transport.abort() if self._cut else dst.close()


def _terminals_file(desk: Desk, folder: Path, pos: TerminalClient) -> Path:
    path = folder / "terminals.json"
    clients = {"counter": desk.counter, "pos": pos, "kiosk": desk.kiosk}
    path.write_text(
        json.dumps(
            {
                name: {
                    "terminal_id": client.terminal_id,
                    "terminal_key": client.terminal_key.hex(),
                    "kind": name,
                }
                for name, client in clients.items()
            }
        )
    )
    return path


async def _options(desk: Desk, slot: Slot, folder: Path, base_url: str | None = None) -> list[str]:
    """Each test's own POS (every command signs in, and sign-ins are rate limited)."""
    pos = await desk.service.terminal("pos", desk.fixmedins_code)
    return [
        *("--base-url", base_url or desk.service.base_url),
        *("--terminals", str(_terminals_file(desk, folder, pos))),
        *("--reader", slot.reader_name),
        *("--wait", "10"),
        *("--outbox", str(folder / "outbox.sqlite3")),
    ]


async def terminal_cli_acting(marker: str, act, *args: str) -> tuple[int, str, str]:
    """The command, with ``act()`` awaited as soon as its progress shows ``marker``."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "cardsvc.terminal_sdk", *args),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    seen = []
    while line := (await asyncio.wait_for(process.stderr.readline(), 60)).decode():
        seen.append(line)
        if marker in line:
            await act()
            break
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), "".join(seen) + err.decode()


def _one_line(err: str) -> str:
    """The failure line: the last on stderr, after the progress lines; no traceback."""
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert not last.startswith("  · "), err
    return last


async def test_command_line_service_gone_mid_visit_then_at_the_settlement(
    desk: Desk, slot: Slot, tmp_path: Path
):
    person = await desk.holder(balance=20000)
    await desk.issue(slot, person["psn_no"])
    visit = ("visit", "--pin", PIN, "--item", "A-AMOX:12.00x2")

    # Gone while the card is being authenticated: nothing is sent to settle.
    async with Relay(desk.service.base_url, b"POST /v1/card-auth/verify ") as relay:
        code, out, err = await terminal_cli(
            *visit, *await _options(desk, slot, tmp_path, relay.base_url)
        )
    assert code == Exit.SERVICE_UNREACHABLE and out == "", err
    line = _one_line(err)
    assert line.startswith(f"cannot reach the card service at {relay.base_url} (")
    assert "nothing was charged;" in line and "run the command again" in line
    assert await desk.settlements_of(person["psn_no"]) == 0

    # Gone as the settlement is sent, or once it reached the service: pending, kept in the
    # outbox, and finished by the command the message names (with the service back).
    for after_request, settled, outcome in (
        (False, 0, "was not made (401 CARD_TOKEN_INVALID): nothing was charged; run the visit"),
        (True, 1, "is confirmed: the holder pays ¥"),
    ):
        folder = tmp_path / f"pos-{after_request}"
        folder.mkdir()
        options = await _options(desk, slot, folder)
        cut = Relay(desk.service.base_url, b"POST /v1/settlements ", after_request=after_request)
        async with cut as relay:
            gone = [o if o != desk.service.base_url else relay.base_url for o in options]
            code, out, err = await terminal_cli(*visit, *gone)
        assert code == Exit.PENDING and out == "", err
        line = _one_line(err)
        assert "the payment is not confirmed yet" in line
        assert "do not take cash yet; the outbox will finish it" in line
        drain = line.split("run `")[1].split("`")[0]
        assert drain.startswith("python -m cardsvc.terminal_sdk outbox --drain --base-url ")

        words = drain.split()[3:]
        words[words.index("--base-url") + 1] = desk.service.base_url
        code, out, err = await terminal_cli(*words)
        assert code == 0, err
        assert outcome in err
        assert await desk.settlements_of(person["psn_no"]) == settled


async def test_command_line_card_taken_out_mid_visit(desk: Desk, slot: Slot, tmp_path: Path):
    person = await desk.holder(balance=20000)
    await desk.issue(slot, person["psn_no"])
    code, out, err = await terminal_cli_acting(
        str(flows.Step.PIN_VERIFIED),
        lambda: asyncio.to_thread(slot.remove),
        *("visit", "--pin", PIN, "--item", "A-AMOX:12.00"),
        *(await _options(desk, slot, tmp_path)),
    )
    assert code == Exit.CARD_PROBLEM and out == "", err
    assert _one_line(err) == (
        "the card was taken out before the payment was finished: nothing was charged;"
        " put the card back and run the visit again"
    )
    assert await desk.settlements_of(person["psn_no"]) == 0


async def test_command_line_unknown_item_is_caught_before_the_pin(
    desk: Desk, slot: Slot, tmp_path: Path
):
    person = await desk.holder(balance=20000)
    await desk.issue(slot, person["psn_no"])
    code, out, err = await terminal_cli(
        *("visit", "--pin", "000000", "--item", "A-AMOK:12.00", "--item", "C-VIT:5"),
        *(await _options(desk, slot, tmp_path)),
    )
    assert code == Exit.USAGE and out == "", err
    assert _one_line(err) == (
        "not in the catalog: A-AMOK (did you mean A-AMOX?): check the item code and run the"
        " visit again (the PIN was not asked for)"
    )
    assert "waiting for a card" not in err
    with slot.connected() as reader:  # the wrong PIN never reached the card
        reader.select_ssse()
        assert reader.pin_tries_left() == 3


async def test_command_line_reader_gone(desk: Desk, slot: Slot, tmp_path: Path):
    options = await _options(desk, slot, tmp_path)
    options[options.index("--reader") + 1] = "Reader Unplugged 00 00"
    code, out, err = await terminal_cli("visit", "--pin", PIN, "--item", "A-AMOX:1", *options)
    assert code == Exit.READER_UNAVAILABLE and out == "", err
    line = _one_line(err)
    assert line.startswith("the card reader is not available (no reader 'Reader Unplugged 00 00'")
    assert "pcscd is running" in line
