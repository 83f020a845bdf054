"""The POS outbox: its transitions as tables, the SQLite file, and the forwarder against a
scripted service (the real one is in tests/reader/test_flows.py)."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cardsvc.terminal_sdk.client import Response, TerminalError
from cardsvc.terminal_sdk.outbox import (
    VOID_TOKEN,
    Entry,
    Forwarder,
    Outbox,
    Policy,
    SettlementPending,
    after_answer,
    after_no_answer,
    new_reverse,
    new_settle,
    to_void,
)

NOW = 1_800_000_000.0
POLICY = Policy(
    settle_attempts=3, settle_ttl=100, followup_attempts=4, backoff_base=1, backoff_cap=5
)
BODY = {"card_token": "secret-token", "insutype": "310", "feedetail": []}
SETTLED = {"setl_id": "S20261125" + "0" * 20, "status": "settled"}


def settle_entry(**changes: Any) -> Entry:
    entry = new_settle("T1", BODY, "IK-1", NOW, POLICY)
    return Entry(**{**{f: getattr(entry, f) for f in entry.__struct_fields__}, **changes})


def error(status: int, code: str, **details: Any) -> Response:
    return Response(status, {"error": {"code": code, "message": code.lower(), "details": details}})


# ---------------------------------------------------------------------- transitions
ANSWERS = [
    ("settled", Response(200, SETTLED), "settle", "done"),
    ("policy refusal", error(422, "CARD_NOT_ACTIVE"), "settle", "refused"),
    ("token expired, never settled", error(401, "CARD_TOKEN_INVALID"), "settle", "refused"),
    ("key reused for another body", error(409, "IDEMPOTENCY_MISMATCH"), "settle", "refused"),
    ("database down", error(503, "DATABASE_UNAVAILABLE"), "settle", "pending"),
    ("internal error", error(500, "INTERNAL"), "settle", "pending"),
    ("request timeout", Response(408, None), "settle", "pending"),
    ("rate limited", Response(429, None), "settle", "pending"),
]


@pytest.mark.parametrize(
    ("resp", "kind", "status"), [a[1:] for a in ANSWERS], ids=[a[0] for a in ANSWERS]
)
def test_settle_answers(resp: Response, kind: str, status: str):
    after = after_answer(settle_entry(), resp, NOW, POLICY)
    assert (after.kind, after.status) == (kind, status)
    if status == "pending":
        assert after.attempts == 1 and after.next_try_at == NOW + 1
    else:
        assert after.body["card_token"] == "" and after.answer_status == resp.status


def test_void_finds_the_settlement_and_turns_into_its_reversal():
    void = to_void(settle_entry(attempts=3), NOW)
    assert void.body["card_token"] == VOID_TOKEN and void.expires_at is None
    after = after_answer(void, error(409, "IDEMPOTENCY_MISMATCH", setl_id="S1"), NOW, POLICY)
    assert (after.kind, after.status, after.path) == (
        "reverse",
        "pending",
        "/v1/settlements/S1/reverse",
    )
    assert after.key == "IK-1" and after.attempts == 0


def test_void_of_a_key_the_service_never_saw_is_done():
    after = after_answer(
        to_void(settle_entry(), NOW), error(401, "CARD_TOKEN_INVALID"), NOW, POLICY
    )
    assert (after.kind, after.status, after.result) == ("void", "done", {"settled": False})


@pytest.mark.parametrize(
    "resp", [error(403, "TERMINAL_DISABLED"), error(503, "X"), Response(401, None)]
)
def test_void_without_a_decisive_answer_tries_again(resp: Response):
    after = after_answer(to_void(settle_entry(), NOW), resp, NOW, POLICY)
    assert (after.kind, after.status, after.attempts) == ("void", "pending", 1)


def test_reverse_answers():
    reverse = new_reverse("T1", "S1", "why", NOW)
    done = after_answer(reverse, Response(200, {"reversal_id": "R1"}), NOW, POLICY)
    assert done.status == "done" and done.result == {"reversal_id": "R1"}
    refused = after_answer(reverse, error(403, "NOT_OWN_FACILITY"), NOW, POLICY)
    assert refused.status == "refused"


def test_backoff_doubles_up_to_the_cap():
    entry = new_reverse("T1", "S1", "why", NOW)
    delays = []
    for _ in range(3):
        entry = after_no_answer(entry, "timeout", NOW, POLICY)
        delays.append(entry.next_try_at - NOW)
    assert delays == [1, 2, 4]
    entry = after_no_answer(entry, "timeout", NOW, POLICY)
    assert entry.status == "stuck" and entry.attempts == 4  # followups never expire: stuck


def test_settle_is_given_up_after_its_attempts_or_its_ttl():
    tired = after_no_answer(settle_entry(attempts=2), "timeout", NOW, POLICY)
    assert tired.kind == "void" and tired.status == "pending"
    late = after_no_answer(settle_entry(), "timeout", NOW + 100, POLICY)
    assert late.kind == "void"
    assert "secret-token" not in str(late.body)


# ---------------------------------------------------------------------- the file
def test_outbox_file_is_private_and_survives_reopening(tmp_path: Path):
    path = tmp_path / "pos" / "outbox.sqlite3"
    outbox = Outbox(path)
    first, second = settle_entry(), settle_entry(key="IK-2", next_try_at=NOW + 50)
    outbox.put(first)
    outbox.put(second)
    outbox.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    reopened = Outbox(path)
    assert reopened.get("IK-1") == first
    assert [e.key for e in reopened.pending()] == ["IK-1", "IK-2"]
    assert [e.key for e in reopened.pending(due_by=NOW)] == ["IK-1"]
    reopened.put(after_answer(first, Response(200, SETTLED), NOW, POLICY))
    assert [e.key for e in reopened.pending()] == ["IK-2"]
    assert reopened.prune(NOW + 1) == 1  # the finished one; pending ones are kept
    assert [e.key for e in reopened.entries()] == ["IK-2"]
    reopened.close()


# ---------------------------------------------------------------------- the forwarder
class ScriptedService:
    """Answers each request with the next scripted outcome: a Response, or an exception."""

    def __init__(self, *script: Response | BaseException | Callable[[], Any]) -> None:
        self.script = list(script)
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []

    async def __call__(
        self, method: str, path: str, json: Any, headers: dict[str, str]
    ) -> Response:
        self.requests.append((path, json, headers))
        outcome = self.script.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        if callable(outcome):
            return await outcome()
        return outcome


@pytest.fixture
def outbox(tmp_path: Path):
    box = Outbox(tmp_path / "outbox.sqlite3")
    yield box
    box.close()


def forwarder(outbox: Outbox, service: ScriptedService, **kw: Any) -> Forwarder:
    kw.setdefault("immediate_delays", (0, 0))
    return Forwarder(outbox, service, "T1", policy=POLICY, **kw)


async def test_a_lost_answer_is_retried_with_the_same_key_and_body(outbox: Outbox):
    service = ScriptedService(aiohttp.ServerDisconnectedError(), Response(200, SETTLED))
    assert await forwarder(outbox, service).settle(dict(BODY), key="IK-9") == SETTLED
    (p1, b1, h1), (p2, b2, h2) = service.requests
    assert p1 == p2 == "/v1/settlements" and b1 == b2 == BODY
    assert h1 == h2 == {"Idempotency-Key": "IK-9"}
    entry = outbox.get("IK-9")
    assert entry is not None and (entry.status, entry.attempts) == ("done", 1)


async def test_a_slow_service_counts_as_no_answer(outbox: Outbox):
    async def hang() -> Response:
        await asyncio.sleep(5)
        raise AssertionError("not reached")

    service = ScriptedService(hang, Response(200, SETTLED))
    fwd = forwarder(outbox, service, request_timeout=0.05)
    assert await fwd.settle(dict(BODY)) == SETTLED


async def test_a_refusal_raises_the_services_error(outbox: Outbox):
    service = ScriptedService(error(422, "UNKNOWN_ITEM", codes=["X"]))
    with pytest.raises(TerminalError) as refused:
        await forwarder(outbox, service).settle(dict(BODY))
    assert (refused.value.status, refused.value.code) == (422, "UNKNOWN_ITEM")
    assert refused.value.details == {"codes": ["X"]}
    assert len(service.requests) == 1


async def test_no_answer_at_all_leaves_it_pending_for_the_next_drain(outbox: Outbox):
    clock = [NOW]
    down = ScriptedService(*[aiohttp.ClientConnectionError()] * 2)
    fwd = forwarder(outbox, down, immediate_delays=(0,), clock=lambda: clock[0])
    with pytest.raises(SettlementPending) as pending:
        await fwd.settle(dict(BODY), key="IK-7")
    assert pending.value.key == "IK-7"
    assert await fwd.drain() == []  # not due yet: backing off

    clock[0] += 10
    up = ScriptedService(Response(200, SETTLED))
    (entry,) = await forwarder(outbox, up, clock=lambda: clock[0]).drain()
    assert entry.status == "done" and up.requests[0][2] == {"Idempotency-Key": "IK-7"}


async def test_a_voided_settlement_is_reversed_in_the_same_delivery(outbox: Outbox):
    clock = [NOW]
    outbox.put(settle_entry())
    clock[0] += 101  # expired while the terminal was off
    service = ScriptedService(
        error(409, "IDEMPOTENCY_MISMATCH", setl_id="S1"), Response(200, {"reversal_id": "R1"})
    )
    (entry,) = await forwarder(outbox, service, clock=lambda: clock[0]).drain()
    (void_path, void_body, void_headers), (rev_path, _, rev_headers) = service.requests
    assert void_path == "/v1/settlements" and void_body["card_token"] == VOID_TOKEN
    assert void_headers == {"Idempotency-Key": "IK-1"}
    assert rev_path == "/v1/settlements/S1/reverse" and rev_headers == {}
    assert (entry.kind, entry.status, entry.result) == ("reverse", "done", {"reversal_id": "R1"})


async def test_drain_leaves_other_terminals_entries_alone(outbox: Outbox):
    outbox.put(settle_entry(terminal_id="T2"))
    assert await forwarder(outbox, ScriptedService()).drain(due_only=False) == []
