"""Group commit of the hot path's other writes (issue #13, item 3): the nonce admission of
every signed request, and card authentication's challenge and verify writes, each go
through a per-worker batcher, one statement and one commit per batch, each request with
its own answer. Batches are counted with the ``cardsvc_batch_size`` histogram; where a test
needs a batch of a known make-up, a transaction of its own holds a row the batch's
statement must wait for, while the next batch gathers behind it."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from cardcrypto import profile
from cardsvc.ops.metrics import REGISTRY
from cardsvc.terminal_sdk.client import Response, TerminalClient
from tests.support.api import IssuedCard, Service, issue_card

pytestmark = pytest.mark.asyncio(loop_scope="session")

_CHALLENGE, _VERIFY = "/v1/card-auth/challenge", "/v1/card-auth/verify"


def _batches(batcher: str) -> tuple[float, float]:
    """(batches run, jobs run) so far by the named batcher of this process."""
    labels = {"batcher": batcher}
    count = REGISTRY.get_sample_value("cardsvc_batch_size_count", labels) or 0.0
    total = REGISTRY.get_sample_value("cardsvc_batch_size_sum", labels) or 0.0
    return count, total


def _code(resp: Response) -> str:
    error = resp.body.get("error") if isinstance(resp.body, dict) else None
    return str(error["code"]) if error else ""


class Signed:
    """A request signed once, to send (and send again) byte for byte."""

    def __init__(self, client: TerminalClient, path: str, json: Any, nonce: str | None = None):
        self.client, self.path = client, path
        self.body = msgspec.json.encode(json)
        self.headers = client.signed_headers("POST", path, self.body, nonce=nonce)

    @property
    def nonce(self) -> str:
        return self.headers["X-Nonce"]

    async def send(self) -> Response:
        return await self.client.send("POST", self.path, self.body, self.headers)


def _nonce() -> str:
    return os.urandom(16).hex()


@pytest_asyncio.fixture(loop_scope="session")
async def db(service: Service) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(service.database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def _waiting_on_lock(
    db: asyncpg.Connection, table: str, *, besides: int = 0, within: float = 10.0
) -> int:
    """The pid of the service's statement that waits for a lock while writing ``table``
    (other than ``besides``, one just terminated)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pid = await db.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'cardsvc' AND wait_event_type = 'Lock'"
            " AND query LIKE '%' || $1 || '%' AND pid <> $2 LIMIT 1",
            table,
            besides,
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.02)
    raise AssertionError(f"no statement writing {table} waits for a lock")


async def _gather(sends: Sequence[Callable[[], Awaitable[Response]]]) -> list[Response]:
    return list(await asyncio.gather(*(send() for send in sends)))


# --- card authentication from several terminals at once -------------------------------


async def _cards(service: Service, counter: TerminalClient, n: int) -> list[IssuedCard]:
    cards = []
    for _ in range(n):
        person = await service.person()
        cards.append(await issue_card(counter, person["psn_no"]))
    return cards


async def test_concurrent_card_authentications_are_batched_and_each_gets_its_own_answer(
    service: Service,
):
    counter = await service.terminal("counter")
    cards = await _cards(service, counter, 6)
    lost = cards[-1]
    await counter.call("POST", f"/v1/cards/{lost.card_no}/report-loss")
    terminals = [await service.terminal(kind) for kind in ("counter", "kiosk", "counter")]
    # Every terminal challenges every card for a transaction (the lost one is refused), and
    # asks for a card that does not exist.
    asks = [(t, c) for t in terminals for c in cards]
    challenges = [
        Signed(t, _CHALLENGE, {"card_no": c.card_no, "purpose": "transaction"}) for t, c in asks
    ]
    unknown = [
        Signed(t, _CHALLENGE, {"card_no": "Z99999999", "purpose": "identify"}) for t in terminals
    ]
    before = _batches("card_auth_challenge"), _batches("admission")
    answers = await _gather([s.send for s in challenges + unknown])
    after = _batches("card_auth_challenge"), _batches("admission")

    sent = len(challenges) + len(unknown)
    for name, (b, a) in zip(
        ("challenge", "admission"), zip(before, after, strict=True), strict=True
    ):
        batches, jobs = a[0] - b[0], a[1] - b[1]
        assert jobs == sent, name  # every request went through the batcher
        assert batches < sent, name  # in fewer statements than requests
    for (_t, card), resp in zip(asks, answers, strict=False):
        if card is lost:
            assert resp.status == 422 and _code(resp) == "CARD_NOT_ACTIVE", resp.body
        else:
            assert resp.status == 200, resp.body
            assert resp.body["key_ref"] == f"{profile.KEY_REF_TXN:02x}"
    for resp in answers[len(challenges) :]:
        assert resp.status == 404 and _code(resp) == "CARD_NOT_FOUND", resp.body

    # Each challenge verified at once: the right ones authenticate their own card; a wrong
    # card_sn, a foreign session and the same challenge twice are refused, each alone.
    verifies: list[tuple[str, Signed]] = []
    for (t, card), resp in zip(asks, answers, strict=False):
        if card is lost:
            continue
        ch = resp.body
        card.card.verify("123456")
        cryptogram = card.card.internal_authenticate(
            profile.KEY_REF_TXN, bytes.fromhex(ch["challenge"])
        ).hex()
        card.card.power_cycle()
        body = {"auth_id": ch["auth_id"], "card_sn": card.card_sn, "cryptogram": cryptogram}
        if card is cards[0]:  # card 0: a wrong card_sn
            verifies.append(("CARD_MISMATCH", Signed(t, _VERIFY, {**body, "card_sn": "0" * 32})))
        elif card is cards[1]:  # card 1: verified by another terminal's session
            other = terminals[(terminals.index(t) + 1) % len(terminals)]
            verifies.append(("CARD_CHALLENGE_INVALID", Signed(other, _VERIFY, body)))
        elif card is cards[2]:  # card 2: sent twice at once, with two nonces
            verifies.append((f"TWICE {ch['auth_id']}", Signed(t, _VERIFY, body)))
            verifies.append((f"TWICE {ch['auth_id']}", Signed(t, _VERIFY, body)))
        else:
            verifies.append((card.card_no, Signed(t, _VERIFY, body)))
    before_v = _batches("card_auth_verify")
    results = await _gather([s.send for _, s in verifies])
    after_v = _batches("card_auth_verify")
    assert after_v[1] - before_v[1] == len(verifies)
    assert after_v[0] - before_v[0] < len(verifies)
    twice: dict[str, list[Response]] = {}
    for (expected, _), resp in zip(verifies, results, strict=True):
        if expected.startswith("TWICE"):
            twice.setdefault(expected, []).append(resp)
        elif expected in ("CARD_MISMATCH", "CARD_CHALLENGE_INVALID"):
            assert resp.status == 401 and _code(resp) == expected, resp.body
        else:
            assert resp.status == 200, resp.body
            assert resp.body["card_no"] == expected and resp.body["purpose"] == "transaction"
    # One challenge consumed once: one answer authenticates, the other finds it used.
    assert len(twice) == len(terminals)
    for pair in twice.values():
        assert sorted((r.status, _code(r)) for r in pair) == [
            (200, ""),
            (401, "CARD_CHALLENGE_INVALID"),
        ], [r.body for r in pair]


# --- a replayed nonce inside a batch of fresh ones -------------------------------------


async def test_a_replayed_nonce_in_a_batch_of_fresh_ones_is_refused_alone(
    service: Service, db: asyncpg.Connection
):
    counter, kiosk = await service.terminal("counter"), await service.terminal("kiosk")
    ask = {"card_no": "Z99999998", "purpose": "identify"}  # no such card: admitted, then 404
    used = Signed(counter, _CHALLENGE, ask)
    assert (await used.send()).status == 404  # its nonce is recorded
    # A transaction of the test's own holds one nonce: the lone request that uses it waits
    # in its batch's statement, and everything sent meanwhile gathers as the next batch.
    held = Signed(kiosk, _CHALLENGE, ask)
    blocker = await asyncpg.connect(service.database_url)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(
            "INSERT INTO request_nonces (terminal_id, nonce) VALUES ($1, $2)",
            kiosk.terminal_id,
            held.nonce,
        )
        before = _batches("admission")
        first = asyncio.create_task(held.send())
        await _waiting_on_lock(db, "request_nonces")
        fresh = [Signed(t, _CHALLENGE, ask) for t in (counter, kiosk) for _ in range(4)]
        twin = Signed(counter, _CHALLENGE, ask)  # one nonce sent twice at once
        sends = [used.send] + [s.send for s in fresh] + [twin.send, twin.send]
        pending = [asyncio.create_task(send()) for send in sends]
        await asyncio.sleep(0.3)  # all of them queued behind the held batch
        await tx.rollback()  # the held nonce was never recorded: its request is fresh
    finally:
        await blocker.close()
    assert (await first).status == 404
    replay, *rest = await asyncio.gather(*pending)
    after = _batches("admission")

    assert replay.status == 401 and _code(replay) == "NONCE_REPLAYED", replay.body
    fresh_answers, twins = rest[: len(fresh)], rest[len(fresh) :]
    assert [r.status for r in fresh_answers] == [404] * len(fresh), [r.body for r in rest]
    # The same nonce twice never shares a batch: one is admitted, the other refused.
    assert sorted((r.status, _code(r)) for r in twins) == [
        (401, "NONCE_REPLAYED"),
        (404, "CARD_NOT_FOUND"),
    ]
    # The replay, the fresh ones and one twin in one batch; the other twin in the next.
    assert after[1] - before[1] == len(sends) + 1  # the held request's batch too
    assert after[0] - before[0] == 3, after


# --- a batch whose statement fails -----------------------------------------------------


async def test_a_failed_admission_batch_answers_each_request_503_and_records_no_nonce(
    service: Service, db: asyncpg.Connection
):
    counter, kiosk = await service.terminal("counter"), await service.terminal("kiosk")
    ask = {"card_no": "Z99999997", "purpose": "identify"}
    pilot = Signed(counter, _CHALLENGE, ask)
    batch = [Signed(t, _CHALLENGE, ask) for t in (counter, kiosk) for _ in range(4)]
    blocker = await asyncpg.connect(service.database_url)
    try:
        tx = blocker.transaction()
        await tx.start()
        # The pilot's nonce and one nonce of the batch: both statements wait for them.
        await blocker.executemany(
            "INSERT INTO request_nonces (terminal_id, nonce) VALUES ($1, $2)",
            [(counter.terminal_id, pilot.nonce), (kiosk.terminal_id, batch[-1].nonce)],
        )
        first = asyncio.create_task(pilot.send())
        pid = await _waiting_on_lock(db, "request_nonces")
        pending = [asyncio.create_task(s.send()) for s in batch]
        await asyncio.sleep(0.3)  # queued behind the pilot's batch
        before = _batches("admission")
        await db.execute("SELECT pg_terminate_backend($1)", pid)
        # The batch behind it runs and waits for the other held nonce: end it too.
        killed = await _waiting_on_lock(db, "request_nonces", besides=pid)
        await db.execute("SELECT pg_terminate_backend($1)", killed)
        answers = await asyncio.gather(first, *pending)
        after = _batches("admission")
        await tx.rollback()
    finally:
        await blocker.close()
    assert [(r.status, _code(r)) for r in answers] == [(503, "DATABASE_UNAVAILABLE")] * len(
        answers
    ), [r.body for r in answers]
    assert after[0] - before[0] == 1 and after[1] - before[1] == len(batch)  # one batch
    # Nothing of the failed batches was written: every nonce is still unused, so the same
    # requests, byte for byte, are admitted now.
    recorded = await db.fetchval(
        "SELECT count(*) FROM request_nonces WHERE nonce = ANY($1::text[])",
        [s.nonce for s in [pilot, *batch]],
    )
    assert recorded == 0
    again = await _gather([s.send for s in [pilot, *batch]])
    assert [r.status for r in again] == [404] * len(again), [r.body for r in again]


async def test_a_failed_challenge_batch_answers_each_request_503_and_stores_nothing(
    service: Service, db: asyncpg.Connection
):
    counter = await service.terminal("counter")
    cards = await _cards(service, counter, 3)
    terminals = [await service.terminal("kiosk") for _ in range(2)]
    held = cards[0].card_no
    blocker = await asyncpg.connect(service.database_url)
    try:
        tx = blocker.transaction()
        await tx.start()
        # Storing a challenge checks its card exists (a key-share lock on the card's row):
        # a challenge of this card waits while the test holds the row.
        await blocker.execute("SELECT 1 FROM cards WHERE card_no = $1 FOR UPDATE", held)
        pilot = Signed(terminals[0], _CHALLENGE, {"card_no": held, "purpose": "identify"})
        first = asyncio.create_task(pilot.send())
        pid = await _waiting_on_lock(db, "card_auth_challenges")
        batch = [
            Signed(t, _CHALLENGE, {"card_no": c.card_no, "purpose": "identify"})
            for t in terminals
            for c in cards
        ]
        pending = [asyncio.create_task(s.send()) for s in batch]
        await asyncio.sleep(0.3)  # queued behind the pilot's batch
        before = _batches("card_auth_challenge")
        await db.execute("SELECT pg_terminate_backend($1)", pid)
        killed = await _waiting_on_lock(db, "card_auth_challenges", besides=pid)
        await db.execute("SELECT pg_terminate_backend($1)", killed)
        answers = await asyncio.gather(*pending)
        assert (await first).status == 503
        after = _batches("card_auth_challenge")
        await tx.rollback()
    finally:
        await blocker.close()
    assert [(r.status, _code(r)) for r in answers] == [(503, "DATABASE_UNAVAILABLE")] * len(
        batch
    ), [r.body for r in answers]
    assert after[0] - before[0] == 1 and after[1] - before[1] == len(batch)  # one batch
    # Not one challenge of the batch was stored, though only one card was held.
    stored = await db.fetchval(
        "SELECT count(*) FROM card_auth_challenges WHERE session_id = ANY($1::text[])",
        [t.session_id for t in terminals],
    )
    assert stored == 0
    again = await asyncio.gather(
        *(s.client.request("POST", _CHALLENGE, msgspec.json.decode(s.body)) for s in batch)
    )
    assert [r.status for r in again] == [200] * len(batch)


# --- the batch statement reads what the single admission reads -------------------------


async def test_a_batch_admission_reads_each_request_as_the_single_admission_does(
    service: Service, db: asyncpg.Connection
):
    """``admit_batch`` joins the standing for the whole batch instead of using
    ``standing_cte`` per request: for every kind of request (fresh, replayed, unknown
    terminal, foreign or unknown or ended session, disabled terminal, suspended facility)
    its row equals the single admission's row."""
    from cardsvc.terminals.admission import _ADMIT, _ADMIT_BATCH

    suspended = await service.facility()
    pos = await service.terminal("pos", suspended["fixmedins_code"])
    code = suspended["fixmedins_code"]
    await service.admin_ok("PATCH", f"/v1/facilities/{code}", {"status": "suspended"})
    counter, kiosk = await service.terminal("counter"), await service.terminal("kiosk")
    disabled = await service.terminal("counter")
    await service.admin_ok("PATCH", f"/v1/terminals/{disabled.terminal_id}", {"status": "disabled"})
    cases = [
        (t.terminal_id, s)
        for t in (pos, counter, kiosk, disabled)
        for s in (pos.session_id, counter.session_id, disabled.session_id, "no-such-session")
    ] + [("T99999999", counter.session_id)]
    single_columns = [a.name for a in (await db.prepare(_ADMIT)).get_attributes()]
    batch_columns = [a.name for a in (await db.prepare(_ADMIT_BATCH)).get_attributes()]
    assert batch_columns == single_columns

    async with db.transaction():
        for fresh in (True, False):
            nonces = [_nonce() for _ in cases]
            singles = []
            for (terminal, session), nonce in zip(cases, nonces, strict=True):
                singles.append(await db.fetchrow(_ADMIT, terminal, f"s{nonce}", session))
            if not fresh:  # the single run recorded these: the batch finds them used
                nonces = [f"s{n}" for n in nonces]
            rows = await db.fetch(
                _ADMIT_BATCH, [t for t, _ in cases], nonces, [s for _, s in cases]
            )
            for case, single, row in zip(cases, singles, rows, strict=True):
                expected = None if single is None else {**dict(single), "fresh": fresh}
                got = None if row["fenced"] is None else dict(row)
                assert got == expected, case
