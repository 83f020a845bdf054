"""The settlement pipeline under real batches (real PostgreSQL, hsm_stub, signed terminals):
a batch answers, pays and counts exactly as one request at a time would; a batch that dies
in its write leaves nothing behind, and each of its requests, retried, settles once.

A batch is made by holding one person's account row locked from outside: that person's
settlement waits in its write, and every request sent meanwhile gathers behind it."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from cardsvc.audit.services import new_entry
from cardsvc.settlement import snapshot
from cardsvc.settlement.snapshot import YEAR_COLUMNS
from cardsvc.settlement.store import LineVersion, SettlementWrite, settlement_statement
from cardsvc.terminal_sdk.client import TerminalClient
from cardsvc.web.caller import Admission
from tests.support.api import POLICY_CATALOG, Patient, Service, lines, patient, unique_code

pytestmark = pytest.mark.asyncio(loop_scope="session")

# What differs between two equal settlements of two persons.
_OWN = {"setl_id", "setl_time", "psn_no", "card_no", "mdtrt_id"}


@dataclass
class World:
    service: Service
    counter: TerminalClient
    pos: TerminalClient

    async def patient(self, **kwargs: Any) -> Patient:
        return await patient(self.service, self.pos, self.counter, **kwargs)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(service: Service) -> World:
    await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})
    facility = await service.facility(level="2")
    pos = await service.terminal("pos", facility["fixmedins_code"])
    return World(service, await service.terminal("counter"), pos)


@pytest_asyncio.fixture(loop_scope="session")
async def conn(service: Service) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(service.database_url)
    yield connection
    await connection.close()


def body(p: Patient, token: str, insutype: str, fee: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "card_token": token,
        "insutype": insutype,
        "med_type": "11",
        "mdtrt_id": unique_code("MD"),
        "feedetail": fee,
    }


@dataclass
class Call:
    """One settlement request, sendable again with the same Idempotency-Key and body."""

    p: Patient
    body: dict[str, Any]
    key: str

    def send(self) -> Awaitable[Any]:
        return self.p.terminal.request(
            "POST", "/v1/settlements", self.body, {"Idempotency-Key": self.key}
        )


async def call(p: Patient, insutype: str, fee: list[dict[str, Any]]) -> Call:
    return Call(p, body(p, await p.fresh_token(), insutype, fee), unique_code("IK"))


class AccountHold:
    """A person's account row locked from outside, until released."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.txn = conn.transaction()

    async def take(self, psn_no: str) -> None:
        await self.txn.start()
        await self.conn.execute("SELECT 1 FROM psn_accounts WHERE psn_no = $1 FOR UPDATE", psn_no)

    async def blocked_pid(self) -> int:
        """The backend waiting for this hold (the batch's write)."""
        for _ in range(500):
            pid = await self.conn.fetchval(
                "SELECT pid FROM pg_stat_activity"
                " WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
            )
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.01)
        raise AssertionError("no write ever waited for the held account")

    async def release(self) -> None:
        await self.txn.rollback()


async def batch_of(conn: asyncpg.Connection, setl_id: str) -> list[str]:
    """The settlements of the pipeline batch whose audit entry names ``setl_id``."""
    rows = await conn.fetch(
        "SELECT data FROM audit_log WHERE object_type = 'settlement_batch'"
        " AND action = 'settlement.settled'"
    )
    for row in rows:
        ids = [s["setl_id"] for s in msgspec.json.decode(row["data"])["settlements"]]
        if setl_id in ids:
            return ids
    raise AssertionError(f"{setl_id} is in no batch's audit entry")


async def state(conn: asyncpg.Connection, psn_no: str) -> tuple[Any, ...]:
    balance = await conn.fetchval("SELECT balance FROM psn_accounts WHERE psn_no = $1", psn_no)
    year = await conn.fetchrow(
        f"SELECT {', '.join(YEAR_COLUMNS)} FROM year_states WHERE psn_no = $1",
        psn_no,
    )
    return balance, None if year is None else tuple(year)


def answer(resp: Any) -> tuple[int, Any]:
    if resp.status != 200:
        return resp.status, resp.body["error"]["code"]
    return resp.status, {k: v for k, v in resp.body.items() if k not in _OWN}


async def scenario(world: World) -> tuple[list[Patient], Call, list[Call], Call]:
    """Persons and requests: a refused one (not enrolled in 390), one person twice, a retry
    of a settled request, and one to reverse afterwards; plus a settled request to retry."""
    refused = await world.patient(balance=5000)
    twice = await world.patient(balance=3000)
    retried = await world.patient(balance=2000)
    reversed_ = await world.patient(balance=9000)
    first = await call(retried, "310", lines(("A-AMOX", 1500, 1)))
    assert (await first.send()).status == 200
    calls = [
        await call(refused, "390", lines(("A-AMOX", 1000, 1))),
        await call(twice, "310", lines(("A-AMOX", 2000, 1))),
        await call(twice, "310", lines(("B-CEF", 1500, 2))),
        first,  # the same request again
        await call(reversed_, "310", lines(("A-AMOX", 60000, 1), ("C-VIT", 800, 2))),
    ]
    return [refused, twice, retried, reversed_], first, calls, calls[-1]


async def test_a_batch_answers_pays_and_counts_as_one_request_at_a_time(
    world: World, conn: asyncpg.Connection
) -> None:
    # One request at a time.
    alone_people, _, alone_calls, alone_reversed = await scenario(world)
    alone = [answer(await c.send()) for c in alone_calls]

    # The same, gathered in one batch behind a settlement waiting for its account.
    people, _, calls, to_reverse = await scenario(world)
    blocker = await world.patient(balance=100)
    blocking = await call(blocker, "310", lines(("A-AMOX", 100, 1)))
    hold = AccountHold(conn)
    await hold.take(blocker.psn_no)
    try:
        first_batch = asyncio.ensure_future(blocking.send())
        await hold.blocked_pid()
        sent = [asyncio.ensure_future(c.send()) for c in calls]
        await asyncio.sleep(0.5)  # all of them queued behind the batch in flight
    finally:
        await hold.release()
    assert (await first_batch).status == 200
    batched = [answer(await s) for s in sent]
    assert batched == alone
    assert batched[0] == (422, alone[0][1]) and batched[3][0] == 200

    # They did share a batch: the person's first settlement and the one to reverse; the
    # person's second settlement waited for the next.
    ids = [(await s).body.get("setl_id") for s in sent]
    shared = await batch_of(conn, ids[1])
    assert ids[4] in shared and ids[2] not in shared
    assert ids[3] == (await calls[3].send()).body["setl_id"]  # the retry: the first settlement

    for c, p in ((alone_reversed, alone_people[3]), (to_reverse, people[3])):
        setl_id = (await c.send()).body["setl_id"]
        await p.terminal.call("POST", f"/v1/settlements/{setl_id}/reverse", {"reason": "test"})
    assert [await state(conn, p.psn_no) for p in people] == [
        await state(conn, p.psn_no) for p in alone_people
    ]
    for p in people:
        settled = await conn.fetchval(
            "SELECT count(*) FROM settlements WHERE psn_no = $1", p.psn_no
        )
        assert settled == {people[0].psn_no: 0, people[1].psn_no: 2}.get(p.psn_no, 1)
    proof = await world.service.admin_ok("GET", "/v1/ledger/proof")
    assert proof["ok"] is True
    assert (await world.service.admin_ok("GET", "/v1/audit/verify"))["ok"] is True


async def test_a_batch_that_dies_in_its_write_leaves_nothing_and_each_retry_settles_once(
    world: World, conn: asyncpg.Connection, service: Service
) -> None:
    """Every audit chain head held from outside: a batch's write does all its work, then
    waits for the head it appends to (last); killed there, nothing of it remains."""
    people = [await world.patient(balance=4000) for _ in range(4)]
    calls = [await call(p, "310", lines(("A-AMOX", 3000, 1))) for p in people]
    before = [await state(conn, p.psn_no) for p in people]
    heads = await asyncpg.connect(service.database_url)
    txn = heads.transaction()
    try:
        await txn.start()
        await heads.execute("SELECT 1 FROM audit_chains FOR UPDATE")
        first_batch = asyncio.ensure_future(calls[0].send())
        first = await blocked_on(heads)
        batch = [asyncio.ensure_future(c.send()) for c in calls[1:]]
        await asyncio.sleep(0.5)  # the others queued behind the first batch
        await conn.execute("SELECT pg_terminate_backend($1)", first)
        second = await blocked_on(heads, other_than=first)
        await conn.execute("SELECT pg_terminate_backend($1)", second)
        died = [await first_batch] + [await s for s in batch]
    finally:
        await txn.rollback()
        await heads.close()
    codes = [(r.status, r.body["error"]["code"]) for r in died]
    assert codes == [(503, "DATABASE_UNAVAILABLE")] * 4
    shared = await asyncpg.connect(service.database_url)
    try:
        for p, was in zip(people, before, strict=True):
            assert await state(shared, p.psn_no) == was
            settled = await shared.fetchval(
                "SELECT count(*) FROM settlements WHERE psn_no = $1", p.psn_no
            )
            assert settled == 0
    finally:
        await shared.close()
    # Retried with the same Idempotency-Key and body (a new signature and nonce): once each.
    retried = [await c.send() for c in calls]
    assert [r.status for r in retried] == [200] * 4
    again = [await c.send() for c in calls]
    assert [r.body["setl_id"] for r in again] == [r.body["setl_id"] for r in retried]
    for p in people:
        settled = await conn.fetchval(
            "SELECT count(*) FROM settlements WHERE psn_no = $1", p.psn_no
        )
        assert settled == 1
        assert (await state(conn, p.psn_no))[0] == 1000
    assert (await world.service.admin_ok("GET", "/v1/ledger/proof"))["ok"] is True


async def blocked_on(holder: asyncpg.Connection, other_than: int | None = None) -> int:
    """The backend waiting for a lock ``holder`` holds."""
    for _ in range(500):
        pids = await holder.fetch(
            "SELECT pid FROM pg_stat_activity WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
        )
        found = [r["pid"] for r in pids if r["pid"] != other_than]
        if found:
            return int(found[0])
        await asyncio.sleep(0.01)
    raise AssertionError("no write ever waited for the held lock")


async def test_a_retry_refused_as_another_request_still_spends_its_nonce(
    world: World, conn: asyncpg.Connection
) -> None:
    """Its Idempotency-Key was settled for another body (409): the exact signed request
    sent again is a replay, refused as one."""
    p = await world.patient(balance=5000)
    first = await call(p, "310", lines(("A-AMOX", 1000, 1)))
    assert (await first.send()).status == 200
    other = msgspec.json.encode(
        {**first.body, "mdtrt_id": unique_code("MD"), "card_token": await p.fresh_token()}
    )
    headers = p.terminal.signed_headers("POST", "/v1/settlements", other)
    headers["Idempotency-Key"] = first.key
    mismatch = await p.terminal.send("POST", "/v1/settlements", other, headers)
    assert (mismatch.status, mismatch.body["error"]["code"]) == (409, "IDEMPOTENCY_MISMATCH")
    replay = await p.terminal.send("POST", "/v1/settlements", other, headers)
    assert (replay.status, replay.body["error"]["code"]) == (401, "NONCE_REPLAYED")


async def test_a_batch_waiting_in_its_write_holds_no_audit_chain_head(
    world: World, conn: asyncpg.Connection, service: Service
) -> None:
    """The chain head is taken last: a batch waiting for another transaction (here, on the
    unique key of its own request's nonce, inserted and not yet committed elsewhere) has
    not locked any chain head, so nothing else that audits waits for it."""
    p = await world.patient(balance=5000)
    c = await call(p, "310", lines(("A-AMOX", 1000, 1)))
    raw = msgspec.json.encode(c.body)
    headers = p.terminal.signed_headers("POST", "/v1/settlements", raw)
    headers["Idempotency-Key"] = c.key
    other = await asyncpg.connect(service.database_url)
    txn = other.transaction()
    try:
        await txn.start()
        await other.execute(
            "INSERT INTO request_nonces (terminal_id, nonce) VALUES ($1, $2)",
            headers["X-Terminal-Id"],
            headers["X-Nonce"],
        )
        sent = asyncio.ensure_future(p.terminal.send("POST", "/v1/settlements", raw, headers))
        await blocked_on(other)
        async with conn.transaction():
            free = await conn.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM audit_chains FOR UPDATE NOWAIT) h"
            )
        assert free == 64
    finally:
        await txn.rollback()
        await other.close()
    assert (await sent).status == 200


async def test_the_batch_read_never_scans_the_nonces_whatever_its_cached_plan_saw(
    conn: asyncpg.Connection,
) -> None:
    """A connection keeps one generic plan of the batch read, made with the tables' sizes of
    that moment. request_nonces is UNLOGGED and pruned, so it is near-empty after a crash or
    a fresh start; the nonce probe planned then must still be a key probe once the table has
    grown back, not a scan of every recorded nonce for every request (as it was, inline)."""
    now = dt.datetime.now(dt.UTC)
    doc = msgspec.json.encode(
        [
            snapshot._input_row(  # the statement's own input rows
                0,
                snapshot.SettleInput(
                    psn_no="P1",
                    card_no="C00000001",
                    fixmedins_code="H1",
                    item_codes=["A-AMOX"],
                    injury_case_id=None,
                    idempotency_key="k1",
                    card_auth_id=b"\x01" * 16,
                    standing_of=Admission(terminal_id="T-plan", nonce="n-0", session_id="S"),
                ),
            )
        ]
    ).decode()
    txn = conn.transaction()  # rolled back: the test database keeps its nonces
    await txn.start()
    try:
        await conn.execute("DELETE FROM request_nonces")
        await conn.execute("ANALYZE request_nonces")  # what the planner knows: empty
        await conn.execute(
            "INSERT INTO request_nonces (terminal_id, nonce)"
            " SELECT 'T-plan', 'n-' || i FROM generate_series(1, 5000) i"
        )
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        explain = await conn.prepare("EXPLAIN (ANALYZE, COSTS off) " + snapshot._SETTLE_BATCH)
        plan = "\n".join(r[0] for r in await explain.fetch(doc, now.year, now.date(), now, now))
    finally:
        await txn.rollback()
    assert "Seq Scan on request_nonces" not in plan, plan


async def test_the_batch_write_probes_the_accounts_it_pays_even_in_a_small_city(
    conn: asyncpg.Connection,
) -> None:
    """The planner guesses a batch's JSON input at 100 rows; against a few thousand accounts
    it would rather scan psn_accounts and hash-join (twice per batch: the lock and the
    debit) than probe the key for each. The batch's persons, passed as an array too, make
    both a probe of the primary key whatever the city's size."""
    write = SettlementWrite(
        row={"setl_id": "S-plan", "psn_no": "P-plan-1"},
        postings=[],
        acct_pay=0,
        account_version=1,
        year=2026,
        year_delta=[0] * len(YEAR_COLUMNS),
        flags=[],
    )
    sql, args = settlement_statement(
        [write], new_entry("test", "plan", "settlement_batch", "S-plan", {})
    )
    txn = conn.transaction()  # rolled back: nothing of this stays
    await txn.start()
    try:
        await conn.execute("SET LOCAL session_replication_role = replica")  # no person rows
        await conn.execute(
            "INSERT INTO psn_accounts (psn_no, balance)"
            " SELECT 'P-plan-' || i, 0 FROM generate_series(1, 10000) i"
        )
        await conn.execute("ANALYZE psn_accounts")
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        explain = await conn.prepare("EXPLAIN (COSTS off) " + sql)
        plan = "\n".join(r[0] for r in await explain.fetch(*args))
    finally:
        await txn.rollback()
    assert "Seq Scan on psn_accounts" not in plan, plan


async def test_a_gateway_line_changed_since_its_read_refuses_its_settlement_and_writes_nothing(
    conn: asyncpg.Connection,
) -> None:
    """A gateway settlement marks its visit's lines in the batch write only if each is still
    the version its handler read: a line rewritten in between (cancelled and uploaded again
    under the same feedetl_sn, say) names the settlement in ``lines_lost`` and nothing of
    the batch is written, though its account was free. The lines are found by TID: never
    a scan of the table."""
    txn = conn.transaction()  # rolled back: nothing of this stays
    await txn.start()
    try:
        await conn.execute("SET LOCAL session_replication_role = replica")  # no visit, person
        await conn.execute("INSERT INTO psn_accounts (psn_no, balance) VALUES ('P-lines', 0)")
        account_version = int(
            await conn.fetchval("SELECT xmin::text FROM psn_accounts WHERE psn_no = 'P-lines'")
        )
        read = await conn.fetchrow(
            "INSERT INTO gateway_visit_lines (fixmedins_code, mdtrt_id, feedetl_sn, code,"
            " price_e4, count_e4, total, result, created_msgid)"
            " VALUES ('F-lines', 'M-lines', '1', 'A-AMOX', 10000, 10000, 100, '{}', 'MSG')"
            " RETURNING ctid::text AS tid, xmin::text AS version"
        )
        # Rewritten in another transaction's stead (a new version: another xmin).
        await conn.execute("SAVEPOINT rewrite")
        await conn.execute("UPDATE gateway_visit_lines SET total = 200 WHERE mdtrt_id = 'M-lines'")
        await conn.execute("RELEASE SAVEPOINT rewrite")
        write = SettlementWrite(
            row={"setl_id": "S-lines", "psn_no": "P-lines"},
            postings=[],
            acct_pay=0,
            account_version=account_version,
            year=2026,
            year_delta=[0] * len(YEAR_COLUMNS),
            flags=[],
            visit_lines=(LineVersion(read["tid"], read["version"]),),
        )
        sql, args = settlement_statement(
            [write], new_entry("test", "lines", "settlement_batch", "S-lines", {})
        )
        row = await conn.fetchrow(sql, *args)
        assert (row["ok"], row["locked"], row["lines_lost"]) == (False, ["P-lines"], ["S-lines"])
        assert (
            await conn.fetchval(
                "SELECT setl_id FROM gateway_visit_lines WHERE mdtrt_id = 'M-lines'"
            )
            is None
        )
        explain = await conn.prepare("EXPLAIN (COSTS off) " + sql)
        plan = "\n".join(r[0] for r in await explain.fetch(*args))
    finally:
        await txn.rollback()
    assert "Seq Scan on gateway_visit_lines" not in plan, plan
