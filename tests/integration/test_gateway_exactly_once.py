"""Exactly once through the national gateway, for what a message does and not only for its
answer: the msgid is reserved with its body before the transaction runs (another body is
refused MSGID_REUSED up front, a concurrent try of the same body MSGID_IN_PROGRESS, a
reservation left by a crash is taken over once its lease ends); a 9102 answer is stored as
its file's number and read again while the file is kept; old answers are purged."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from cardsvc.config import ConfigError, load_settings
from cardsvc.national import envelope, messages, stmtfiles
from tests.support.api import Service, issue_card
from tests.support.gateway import GatewayClient, gateway_client

pytestmark = pytest.mark.asyncio(loop_scope="session")

SLOW = "X9911"


@pytest.fixture
def slow_transaction() -> Iterator[tuple[asyncio.Event, list[Any]]]:
    """A transaction of this test only: records each run's input, and holds the first
    run until the event is set."""
    from cardsvc.national.registry import TRANSACTIONS, transaction

    gate = asyncio.Event()
    runs: list[Any] = []

    @transaction(SLOW)
    async def slow(call, inputs):
        runs.append(msgspec.json.decode(inputs["data"]))
        if len(runs) == 1:
            await gate.wait()
        return {"data": {"runs": len(runs)}}

    yield gate, runs
    gate.set()
    del TRANSACTIONS[SLOW]


@pytest_asyncio.fixture(loop_scope="session")
async def db(service: Service) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(service.database_url)
    yield conn
    await conn.close()


async def _until_running(runs: list[Any], count: int = 1) -> None:
    for _ in range(500):
        if len(runs) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the transaction never ran")


async def test_another_body_under_a_running_msgid_never_runs(
    service: Service, slow_transaction: tuple[asyncio.Event, list[Any]]
) -> None:
    gate, runs = slow_transaction
    client = await gateway_client(service)
    first = client.envelope(SLOW, {"data": {"visit": "A"}})
    other = {**first, "input": {"data": {"visit": "B"}}}
    running = asyncio.create_task(client.post(first))
    await _until_running(runs)
    reused = await client.post(other, client.headers())
    assert (reused.infcode, reused.code) == (-1, "MSGID_REUSED"), reused.body
    twin = await client.post(first, client.headers())
    assert (twin.infcode, twin.code) == (-1, "MSGID_IN_PROGRESS"), twin.body
    gate.set()
    answer = await running
    assert answer.infcode == 0 and answer.body["output"] == {"data": {"runs": 1}}
    assert runs == [{"visit": "A"}]  # B never ran, the twin did not run again
    assert (await client.post(first, client.headers())).raw == answer.raw
    assert (await client.post(other, client.headers())).code == "MSGID_REUSED"
    assert runs == [{"visit": "A"}]


def _hash(infno: str, inputs: dict[str, Any]) -> bytes:
    raw = {name: msgspec.Raw(msgspec.json.encode(value)) for name, value in inputs.items()}
    return envelope.body_hash(infno, raw)


async def test_a_reservation_left_by_a_crash_is_taken_over_after_its_lease(
    service: Service, db: asyncpg.Connection, slow_transaction: tuple[asyncio.Event, list[Any]]
) -> None:
    gate, runs = slow_transaction
    gate.set()
    client = await gateway_client(service)
    inputs = {"data": {"visit": "A"}}
    env = client.envelope(SLOW, inputs)
    # A try admitted (its msgid reserved), then its process died before the handler ran.
    pool = await asyncpg.create_pool(service.database_url, min_size=1, max_size=1)
    try:
        admission = messages.Admission(
            client.paasid,
            "crashed-try-nonce-0001",
            client.sign_no,
            env["msgid"],
            client.fixmedins_code,
            messages.Reservation(SLOW, _hash(SLOW, inputs), needs_sign_no=True),
        )
        [crashed] = await messages.admit_batch(pool, [admission], lease=600)
    finally:
        await pool.close()
    assert isinstance(crashed, messages.Admitted) and crashed.reserved
    busy = await client.post(env)
    assert busy.code == "MSGID_IN_PROGRESS" and runs == []
    other = await client.post({**env, "input": {"data": {"visit": "B"}}}, client.headers())
    assert other.code == "MSGID_REUSED" and runs == []
    # Its lease ends: the same body runs (once); another body is still refused.
    await db.execute(
        "UPDATE gateway_messages SET pending_until = now() - interval '1 second'"
        " WHERE fixmedins_code = $1 AND msgid = $2",
        client.fixmedins_code,
        env["msgid"],
    )
    again = await client.post(env, client.headers())
    assert again.infcode == 0 and runs == [{"visit": "A"}]
    other = await client.post({**env, "input": {"data": {"visit": "B"}}}, client.headers())
    assert other.code == "MSGID_REUSED" and runs == [{"visit": "A"}]


async def test_a_failed_try_releases_its_msgid_for_the_retry_only(
    service: Service, flaky_after_failure: list[str]
) -> None:
    client = await gateway_client(service)
    env = client.envelope(FLAKY, {"data": {"n": 1}})
    first = await client.post(env)
    assert first.code == "DATABASE_UNAVAILABLE"
    other = await client.post({**env, "input": {"data": {"n": 2}}}, client.headers())
    assert other.code == "MSGID_REUSED"  # the failed try may have done something: its body holds
    again = await client.post(env, client.headers())
    assert again.infcode == 0 and flaky_after_failure == [env["msgid"]] * 2


FLAKY = "X9912"


@pytest.fixture
def flaky_after_failure() -> Iterator[list[str]]:
    from cardsvc.db import DatabaseUnavailable
    from cardsvc.national.registry import TRANSACTIONS, transaction

    runs: list[str] = []

    @transaction(FLAKY)
    async def flaky(call, inputs):
        runs.append(call.msgid)
        if len(runs) == 1:
            raise DatabaseUnavailable("down")
        return {}

    yield runs
    del TRANSACTIONS[FLAKY]


async def test_two_registrations_cancelled_under_one_msgid_cancel_one(
    service: Service, db: asyncpg.Connection
) -> None:
    """The reviewer's case: two different 2202 sent at once under one msgid."""
    from tests.support.api import POLICY_CATALOG, authenticate_card
    from tests.support.gateway import SHANGHAI, card_cert, new_msgid

    await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})
    client = await gateway_client(service)
    counter = await service.terminal("counter")
    pos = await service.terminal("pos", client.fixmedins_code)
    for _round in range(3):
        opened = []
        for _ in range(2):
            person = await service.person()
            card = await issue_card(counter, person["psn_no"])
            auth = await authenticate_card(pos, card, "identify")
            data = {
                "psn_no": person["psn_no"],
                "insutype": "310",
                "begntime": dt.datetime.now(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S"),
                "mdtrt_cert_type": "03",
                "mdtrt_cert_no": card_cert(card.card_no, auth["card_token"]),
                "card_sn": card.card_sn,
            }
            opened.append((await client.ok("2201", {"data": data}))["data"])
        msgid = new_msgid(client.fixmedins_code)
        cancels = [
            client.envelope(
                "2202",
                {"data": {"psn_no": v["psn_no"], "mdtrt_id": v["mdtrt_id"], "ipt_otp_no": ""}},
                msgid=msgid,
            )
            for v in opened
        ]
        answers = await asyncio.gather(*(client.post(e) for e in cancels))
        cancelled = await db.fetchval(
            "SELECT count(*) FROM gateway_visits WHERE fixmedins_code = $1"
            " AND mdtrt_id = ANY($2::text[]) AND status = 'cancelled'",
            client.fixmedins_code,
            [v["mdtrt_id"] for v in opened],
        )
        assert cancelled == 1, [a.body for a in answers]
        assert sorted(str(a.code) for a in answers) == ["MSGID_REUSED", "None"]


# ---------------------------------------------------------------- 9102: a file, by number


async def _uploaded(client: GatewayClient) -> tuple[dict[str, str], bytes]:
    rows = [
        stmtfiles.FileRow(
            setl_id=f"S{n:030d}",
            mdtrt_id=f"M{n:020d}",
            psn_no=f"{n:016d}",
            medfee_sumamt=1000 + n,
            fund_pay_sumamt=500,
            acct_pay=100,
            refd_setl_flag="0",
        )
        for n in range(50)
    ]
    data = stmtfiles.upload_zip(rows)
    up = await client.ok(
        "9101",
        {
            "fsUploadIn": {
                "in": base64.b64encode(data).decode(),
                "filename": "stmt.zip",
                "fixmedins_code": client.fixmedins_code,
            }
        },
    )
    node = {
        "file_qury_no": up["file_qury_no"],
        "filename": up["filename"],
        "fixmedins_code": client.fixmedins_code,
    }
    return node, data


async def test_a_9102_answer_is_its_files_number_read_again_while_the_file_is_kept(
    service: Service, db: asyncpg.Connection
) -> None:
    client = await gateway_client(service)
    node, data = await _uploaded(client)
    env = client.envelope("9102", {"fsDownloadIn": node})
    first = await client.post(env)
    assert first.content_type == "application/zip" and first.raw == data
    stored = await db.fetchrow(
        "SELECT infcode, content_type, answer, file_qury_no FROM gateway_messages"
        " WHERE fixmedins_code = $1 AND msgid = $2",
        client.fixmedins_code,
        env["msgid"],
    )
    assert dict(stored) == {
        "infcode": 0,
        "content_type": "application/zip",
        "answer": None,  # never a copy of the file
        "file_qury_no": node["file_qury_no"],
    }
    again = await client.post(env, client.headers())
    assert again.content_type == "application/zip" and again.raw == data
    # Expired: the same message is refused as a new download would be, and never served.
    await db.execute(
        "UPDATE national_files SET dld_endtime = now() - interval '1 second'"
        " WHERE file_qury_no = $1",
        node["file_qury_no"],
    )
    expired = await client.post(env, client.headers())
    assert (expired.content_type, expired.code) == ("application/json", "FILE_EXPIRED")
    await db.execute("DELETE FROM national_files WHERE file_qury_no = $1", node["file_qury_no"])
    gone = await client.post(env, client.headers())
    assert gone.code == "FILE_NOT_FOUND"
    # Each time the file left cardsvc, the audit log says who took it.
    rows = await db.fetch(
        "SELECT actor, data FROM audit_log WHERE action = 'national.file_downloaded'"
        " AND object_id = $1 ORDER BY at",
        node["file_qury_no"],
    )
    assert [msgspec.json.decode(r["data"])["again"] for r in rows] == [False, True]
    data0 = msgspec.json.decode(rows[0]["data"])
    assert rows[0]["actor"] == f"gateway:{client.paasid}"
    assert (data0["msgid"], data0["opter"], data0["opter_type"], data0["infno"]) == (
        env["msgid"],
        "OP001",
        "1",
        "9102",
    )


# ---------------------------------------------------------------- retention


async def test_answers_older_than_the_retention_are_purged(
    service: Service, db: asyncpg.Connection
) -> None:
    client = await gateway_client(service)
    sign_in = {"signIn": {"opter_no": "OP9", "mac": "", "ip": ""}}
    old = client.envelope("9001", sign_in)
    assert (await client.post(old)).infcode == 0
    recent = client.envelope("9001", sign_in)
    assert (await client.post(recent)).infcode == 0
    await db.execute(
        "UPDATE gateway_messages SET created_at = now() - interval '31 days'"
        " WHERE fixmedins_code = $1 AND msgid = $2",
        client.fixmedins_code,
        old["msgid"],
    )
    pool = await asyncpg.create_pool(service.database_url, min_size=1, max_size=1)
    try:
        assert await messages.purge(pool, dt.timedelta(days=30)) >= 1
    finally:
        await pool.close()
    kept = await db.fetch(
        "SELECT msgid FROM gateway_messages WHERE fixmedins_code = $1", client.fixmedins_code
    )
    msgids = {r["msgid"] for r in kept}
    assert old["msgid"] not in msgids and recent["msgid"] in msgids


async def test_the_retention_is_a_setting_of_at_least_a_day() -> None:
    env = {"CARDSVC_ADMIN_TOKEN": "t" * 16, "CARDSVC_DATA_KEY": "00" * 32}
    assert load_settings(env).gateway_message_retention_days == 30
    days = {**env, "CARDSVC_GATEWAY_MESSAGE_RETENTION_DAYS": "90"}
    assert load_settings(days).gateway_message_retention_days == 90
    with pytest.raises(ConfigError, match="CARDSVC_GATEWAY_MESSAGE_RETENTION_DAYS"):
        load_settings({**env, "CARDSVC_GATEWAY_MESSAGE_RETENTION_DAYS": "0"})


async def test_a_reservation_that_waited_for_another_workers_sees_it(
    service: Service, db: asyncpg.Connection
) -> None:
    """Another worker's admission of the msgid, not yet committed when this one's statement
    began: this one waits for it, then reads what it became (here: an answer)."""
    client = await gateway_client(service)
    inputs = {"data": {"visit": "A"}}
    msgid = client.envelope(SLOW, inputs)["msgid"]
    body_hash = _hash(SLOW, inputs)
    pool = await asyncpg.create_pool(service.database_url, min_size=1, max_size=2)
    other = await asyncpg.connect(service.database_url)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute(
            "INSERT INTO gateway_messages (fixmedins_code, msgid, infno, body_hash, paasid,"
            " inf_refmsgid, infcode, content_type, answer)"
            " VALUES ($1, $2, $3, $4, $5, 'r', 0, 'application/json', 'other worker')",
            client.fixmedins_code,
            msgid,
            SLOW,
            body_hash,
            client.paasid,
        )
        admission = messages.Admission(
            client.paasid,
            "waiting-admission-0001",
            client.sign_no,
            msgid,
            client.fixmedins_code,
            messages.Reservation(SLOW, body_hash, needs_sign_no=True),
        )
        waiting = asyncio.create_task(messages.admit_batch(pool, [admission]))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # held by the other worker's row
        await tx.commit()
        [admitted] = await waiting
    finally:
        await other.close()
        await pool.close()
    assert isinstance(admitted, messages.Admitted) and not admitted.reserved
    assert admitted.stored is not None and admitted.stored.answer == b"other worker"


async def test_an_answer_stored_by_a_twin_first_rolls_the_handlers_work_back(
    service: Service, db: asyncpg.Connection
) -> None:
    """A try whose lease ended while it ran (its twin took the msgid over and answered):
    the answer its own transaction would store meets the twin's, so its work rolls back
    and the twin's answer is sent, byte for byte."""
    from cardsvc.db import transaction as db_transaction
    from cardsvc.national.registry import TRANSACTIONS, transaction

    infno, gate, runs = "X9912", asyncio.Event(), []
    await db.execute("CREATE TABLE IF NOT EXISTS test_twin_work (run int)")

    @transaction(infno)
    async def in_one_transaction(call, inputs):
        runs.append(len(runs) + 1)
        run = len(runs)
        async with db_transaction(call.pool) as conn:
            await conn.execute("INSERT INTO test_twin_work VALUES ($1)", run)
            if run == 1:
                await gate.wait()
            output = {"data": {"run": run}}
            await call.answered(conn, output)
        return output

    try:
        client = await gateway_client(service)
        env = client.envelope(infno, {"data": {"visit": "A"}})
        first = asyncio.create_task(client.post(env))
        await _until_running(runs)
        await db.execute(
            "UPDATE gateway_messages SET pending_until = now() - interval '1 second'"
            " WHERE fixmedins_code = $1 AND msgid = $2",
            client.fixmedins_code,
            env["msgid"],
        )
        twin = await client.post(env, client.headers())
        assert twin.infcode == 0 and twin.body["output"] == {"data": {"run": 2}}, twin.body
        gate.set()
        answer = await first
        assert answer.raw == twin.raw
        assert [r["run"] for r in await db.fetch("SELECT run FROM test_twin_work")] == [2]
    finally:
        gate.set()
        del TRANSACTIONS[infno]
        await db.execute("DROP TABLE IF EXISTS test_twin_work")
