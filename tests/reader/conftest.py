"""Reader end-to-end fixtures: one real pcscd for the session (foreground, its own reader.conf
naming vpcd on a free port pair), virtual cards inserted in and pulled from its two slots, and
terminals of the session's running service. Cards are only ever driven through pyscard.

A machine without pcscd or vpcd fails here, naming the Debian package to install."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from cardsvc.devenv.pcsc import PcscDaemon, PcscError, free_port_pair
from cardsvc.terminal_sdk import flows
from cardsvc.terminal_sdk.client import TerminalClient
from cardsvc.terminal_sdk.outbox import Forwarder, Outbox
from cardsvc.terminal_sdk.reader import CardReader
from cardsvc.vcard.card import VirtualCard
from cardsvc.vcard.link import CardSlot
from cardsvc.vcard.state import StateFile
from tests.support.api import POLICY_CATALOG, Service, credit

PIN = "123456"


@pytest.fixture(scope="session")
def pcscd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PcscDaemon]:
    daemon = PcscDaemon(tmp_path_factory.mktemp("pcscd"), free_port_pair())
    failure = None
    try:
        daemon.start()
    except PcscError as exc:  # fail, never skip: CI must install pcscd and vsmartcard-vpcd
        failure = str(exc)
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    yield daemon
    daemon.stop()


class Slot:
    """One reader slot of the test pcscd and the virtual card in it (if any)."""

    def __init__(self, daemon: PcscDaemon, index: int, folder: Path) -> None:
        self.reader_name = daemon.reader_names[index]
        self.port = daemon.card_port(index)
        self._folder = folder
        self._card: CardSlot | None = None
        self._readers: list[CardReader] = []

    def blank_card(self, name: str = "card") -> StateFile:
        store = StateFile(self._folder / f"{name}.json")
        store.load_or_blank(create_blank=True)
        return store

    def insert(self, store: StateFile) -> VirtualCard:
        """Put the card whose state is in ``store`` into this slot."""
        self.remove()
        card = VirtualCard(store.load_or_blank(create_blank=False), persist=store.save)
        self._card = CardSlot(card, port=self.port)
        self._card.insert()
        return card

    def remove(self) -> None:
        """Pull the card out and wait until pcscd has seen the slot empty."""
        if self._card is None:
            return
        self._card.remove()
        self._card = None
        probe = CardReader(self.reader_name)
        try:
            deadline = time.monotonic() + 5
            while probe.card_present() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            probe.close()

    def reader(self) -> CardReader:
        reader = CardReader(self.reader_name)
        self._readers.append(reader)
        return reader

    def connected(self, wait: float = 5.0) -> CardReader:
        reader = self.reader()
        reader.wait_for_card(wait)
        return reader

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        self.remove()


@pytest.fixture
def slot(pcscd: PcscDaemon, tmp_path: Path) -> Iterator[Slot]:
    slot = Slot(pcscd, 0, tmp_path)
    yield slot
    slot.close()


@pytest.fixture
def slot2(pcscd: PcscDaemon, tmp_path: Path) -> Iterator[Slot]:
    slot = Slot(pcscd, 1, tmp_path)
    yield slot
    slot.close()


@dataclass
class Desk:
    """A counter, a POS of a level-2 hospital, and a kiosk, signed in to the service."""

    service: Service
    counter: TerminalClient
    pos: TerminalClient
    kiosk: TerminalClient
    fixmedins_code: str
    outboxes: list[Outbox] = field(default_factory=list)

    async def holder(self, balance: int = 100000) -> dict[str, Any]:
        person = await self.service.person(insutypes=("310",))
        if balance:
            await credit(self.service, person["psn_no"], balance)
        return person

    async def issue(self, slot: Slot, psn_no: str, pin: str = PIN) -> flows.IssueResult:
        """Issue at the counter onto a blank card in ``slot``; the card stays inserted."""
        slot.insert(slot.blank_card(psn_no))
        reader = slot.reader()
        try:
            return await flows.issue(self.counter, reader, psn_no, pin, wait=5)
        finally:
            reader.close()  # unpowers the card, as taking it out of the writer would

    def forwarder(self, path: Path, client: TerminalClient | None = None, **kw: Any) -> Forwarder:
        outbox = Outbox(path)
        self.outboxes.append(outbox)
        client = client or self.pos
        return Forwarder(outbox, client.request, client.terminal_id, **kw)

    async def settlements_of(self, psn_no: str) -> int:
        conn = await asyncpg.connect(self.service.database_url)
        try:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM settlements WHERE psn_no = $1", psn_no
            )
            return count
        finally:
            await conn.close()

    async def balance(self, psn_no: str) -> int:
        person = await self.service.admin_ok("GET", f"/v1/persons/{psn_no}")
        return int(person["balc"])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def desk(service: Service) -> AsyncIterator[Desk]:
    await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})
    facility = await service.facility(level="2")
    code = facility["fixmedins_code"]
    desk = Desk(
        service,
        counter=await service.terminal("counter"),
        pos=await service.terminal("pos", code),
        kiosk=await service.terminal("kiosk"),
        fixmedins_code=code,
    )
    yield desk
    for outbox in desk.outboxes:
        outbox.close()


def order(*items: tuple[str, int, int]) -> flows.VisitOrder:
    return flows.VisitOrder(
        feedetail=[flows.FeeLine(code=c, unit_price=p, quantity=q) for c, p, q in items]
    )
