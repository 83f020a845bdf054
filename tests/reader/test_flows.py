"""Card-present flows against the running service, the card in a real pcscd + vpcd reader:
a visit (PIN on the card, transaction cryptogram, preview, settle), a lost card, a card pulled
out mid-visit, the kiosk, and the POS outbox when settle answers are lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cardsvc.terminal_sdk import flows
from cardsvc.terminal_sdk.client import Response, TerminalClient, TerminalError
from cardsvc.terminal_sdk.outbox import Forwarder, Outbox, Policy, SettlementPending
from cardsvc.terminal_sdk.reader import CardRemoved
from tests.reader.conftest import PIN, Desk, Slot, order

pytestmark = pytest.mark.asyncio(loop_scope="session")

AMOX = ("A-AMOX", 1200, 2)


class LosesAnswers:
    """A POS network that loses settle answers: the request reaches the service (or, with
    ``deliver=False``, never leaves the terminal), and the answer never comes back."""

    def __init__(self, client: TerminalClient, lose: int, *, deliver: bool = True) -> None:
        self.client, self.lose, self.deliver = client, lose, deliver
        self.settle_keys: list[str] = []

    async def __call__(
        self, method: str, path: str, json: Any, headers: dict[str, str]
    ) -> Response:
        if path == "/v1/settlements":
            self.settle_keys.append(headers["Idempotency-Key"])
            if self.lose > 0:
                self.lose -= 1
                if self.deliver:
                    await self.client.request(method, path, json, headers)
                raise aiohttp.ServerDisconnectedError()
        return await self.client.request(method, path, json, headers)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _visit(desk: Desk, slot: Slot, forwarder: Forwarder, **kw: Any) -> flows.VisitResult:
    with slot.reader() as reader:
        return await flows.visit(
            desk.pos, reader, forwarder, order(AMOX), lambda: PIN, wait=5, **kw
        )


async def test_visit_settles_with_the_cards_transaction_cryptogram(
    desk: Desk, slot: Slot, tmp_path: Path
):
    person = await desk.holder(balance=50000)
    issued = await desk.issue(slot, person["psn_no"])
    steps: list[flows.Step] = []
    result = await _visit(
        desk, slot, desk.forwarder(tmp_path / "o.sqlite3"), progress=lambda s, m: steps.append(s)
    )
    setl = result.settlement
    assert setl["status"] == "settled" and setl["card_no"] == issued.card_no
    assert setl["psn_no"] == person["psn_no"] and setl["fixmedins_code"] == desk.fixmedins_code
    assert setl["medfee_sumamt"] == 2400 == result.preview["medfee_sumamt"]
    assert setl["acct_pay"] == result.preview["acct_pay"] > 0
    assert await desk.balance(person["psn_no"]) == 50000 - setl["acct_pay"] == setl["balc"]
    assert steps == [
        flows.Step.ITEMS_CHECKED,
        flows.Step.WAITING_FOR_CARD,
        flows.Step.CARD_READ,
        flows.Step.PIN_VERIFIED,
        flows.Step.CARD_AUTHENTICATED,
        flows.Step.PREVIEWED,
        flows.Step.SETTLING,
        flows.Step.SETTLED,
    ]


async def test_card_reported_lost_at_a_counter_is_refused_at_the_pos(
    desk: Desk, slot: Slot, tmp_path: Path
):
    person = await desk.holder()
    issued = await desk.issue(slot, person["psn_no"])
    await desk.counter.call("POST", f"/v1/cards/{issued.card_no}/report-loss")
    with pytest.raises(TerminalError) as refused:
        await _visit(desk, slot, desk.forwarder(tmp_path / "o.sqlite3"))
    assert (refused.value.status, refused.value.code) == (422, "CARD_NOT_ACTIVE")
    assert refused.value.details["status"] == "loss_reported"
    assert await desk.settlements_of(person["psn_no"]) == 0


@pytest.mark.parametrize("pulled_after", [flows.Step.PIN_VERIFIED, flows.Step.PREVIEWED])
async def test_card_pulled_out_mid_visit_is_a_clear_error_and_writes_nothing(
    desk: Desk, slot: Slot, tmp_path: Path, pulled_after: flows.Step
):
    person = await desk.holder(balance=50000)
    await desk.issue(slot, person["psn_no"])

    def progress(step: flows.Step, message: str) -> None:
        if step == pulled_after:
            slot.remove()

    forwarder = desk.forwarder(tmp_path / "o.sqlite3")
    with pytest.raises(CardRemoved, match="removed"):
        await _visit(desk, slot, forwarder, progress=progress)
    assert await desk.settlements_of(person["psn_no"]) == 0
    assert await desk.balance(person["psn_no"]) == 50000
    assert forwarder.outbox.entries() == []


async def test_card_pulled_out_while_being_personalised_cancels_its_issuance(
    desk: Desk, slot: Slot
):
    person = await desk.holder()
    slot.insert(slot.blank_card())
    issued: list[str] = []

    def progress(step: flows.Step, message: str) -> None:
        if step == flows.Step.ISSUED:
            issued.append(message.split()[1])
            slot.remove()

    with slot.reader() as writer, pytest.raises(CardRemoved):
        await flows.issue(desk.counter, writer, person["psn_no"], PIN, progress=progress, wait=5)
    card = await desk.counter.call("GET", f"/v1/cards/{issued[0]}")
    assert card["status"] == "cancelled"
    assert (await desk.issue(slot, person["psn_no"])).status == "active"  # a new card is possible


async def test_kiosk_shows_the_balance_and_the_visit(desk: Desk, slot: Slot, tmp_path: Path):
    person = await desk.holder(balance=30000)
    issued = await desk.issue(slot, person["psn_no"])
    visit = await _visit(desk, slot, desk.forwarder(tmp_path / "o.sqlite3"))
    with slot.reader() as reader:
        seen = await flows.kiosk(desk.kiosk, reader, wait=5)
    summary = seen.summary
    assert summary["card_no"] == issued.card_no and summary["card_status"] == "active"
    assert summary["balc"] == 30000 - visit.settlement["acct_pay"]
    assert [s["setl_id"] for s in summary["settlements"]] == [visit.settlement["setl_id"]]


async def test_lost_settle_answer_is_retried_with_the_same_key_and_can_be_reversed(
    desk: Desk, slot: Slot, tmp_path: Path
):
    person = await desk.holder(balance=50000)
    await desk.issue(slot, person["psn_no"])
    network = LosesAnswers(desk.pos, lose=1)
    outbox = Outbox(tmp_path / "o.sqlite3")
    forwarder = Forwarder(outbox, network, desk.pos.terminal_id, immediate_delays=(0.05,))
    setl = (await _visit(desk, slot, forwarder)).settlement

    assert len(network.settle_keys) == 2 and len(set(network.settle_keys)) == 1
    assert await desk.settlements_of(person["psn_no"]) == 1
    entry = outbox.get(network.settle_keys[0])
    assert entry is not None and entry.status == "done" and entry.attempts == 1
    assert entry.body["card_token"] == ""  # scrubbed once answered
    assert await desk.balance(person["psn_no"]) == 50000 - setl["acct_pay"]

    reversal = await forwarder.reverse(setl["setl_id"])
    assert reversal["setl_id"] == setl["setl_id"] and reversal["acct_refund"] == setl["acct_pay"]
    assert await desk.balance(person["psn_no"]) == 50000
    outbox.close()


async def test_pending_settlement_survives_a_terminal_restart(
    desk: Desk, slot: Slot, tmp_path: Path
):
    person = await desk.holder(balance=50000)
    await desk.issue(slot, person["psn_no"])
    path = tmp_path / "o.sqlite3"
    outbox = Outbox(path)
    network = LosesAnswers(desk.pos, lose=10)
    forwarder = Forwarder(outbox, network, desk.pos.terminal_id, immediate_delays=(0.01,))
    with pytest.raises(SettlementPending) as pending:
        await _visit(desk, slot, forwarder)
    outbox.close()  # the terminal goes down with the answer unknown

    # Restarted: a new sign-in (so the old card token is useless), the same outbox file.
    pos = desk.pos
    restarted = TerminalClient(
        desk.service.http, desk.service.base_url, pos.terminal_id, pos.terminal_key
    )
    reopened = Outbox(path)
    drained = await Forwarder(reopened, restarted.request, pos.terminal_id).drain(due_only=False)
    assert [(e.key, e.status) for e in drained] == [(pending.value.key, "done")]
    assert drained[0].result is not None and drained[0].result["status"] == "settled"
    assert await desk.settlements_of(person["psn_no"]) == 1
    reopened.close()


@pytest.mark.parametrize("reached_service", [True, False])
async def test_settlement_never_confirmed_is_voided_when_it_expires(
    desk: Desk, slot: Slot, tmp_path: Path, reached_service: bool
):
    person = await desk.holder(balance=50000)
    await desk.issue(slot, person["psn_no"])
    clock = Clock()
    outbox = Outbox(tmp_path / "o.sqlite3")
    network = LosesAnswers(desk.pos, lose=10, deliver=reached_service)
    policy = Policy(settle_ttl=120)
    forwarder = Forwarder(
        outbox, network, desk.pos.terminal_id, policy=policy, immediate_delays=(), clock=clock
    )
    with pytest.raises(SettlementPending) as pending:
        await _visit(desk, slot, forwarder)
    clock.now += 121  # the network is back, but too late: the visit is over
    network.lose = 0

    (voided,) = await forwarder.drain(due_only=False)
    assert voided.key == pending.value.key and voided.status == "done"
    if reached_service:
        assert voided.kind == "reverse" and voided.result is not None
        assert voided.result["reversal_id"].startswith("R")
    else:
        assert voided.kind == "void" and voided.result == {"settled": False}
    # Either way, the money is where it was and no settlement stands.
    assert await desk.balance(person["psn_no"]) == 50000
    assert await desk.settlements_of(person["psn_no"]) == int(reached_service)
    outbox.close()
