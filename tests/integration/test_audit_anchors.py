"""Audit anchors against someone who can write to the database: they rewrite entries and
recompute every hash and the chain head (so the chains alone still verify), cut the newest
entries off and rewind the head, or forge anchors. The HSM-MACed anchors kept outside the
database catch each of these; anchoring itself rides out an HSM outage."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from cardcrypto import profile
from cardsvc import db
from cardsvc.audit.anchors import message, parse_line
from cardsvc.audit.chain import GENESIS, AuditEntry, entry_hash
from cardsvc.audit.services import AnchorExportUnavailable, AuditAnchors, AuditLog
from cardsvc.config import Settings
from cardsvc.hsm.tls import hsm_client
from cardsvc.ops.metrics import REGISTRY
from hsm_stub.keystore import KeyType, unwrap_key
from tests.support.api import POLICY_CATALOG, Service, lines, patient
from tests.support.hsm import HsmProcess, hsm_env

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]
ENTRY_COLUMNS = ("chain", "seq", "at", "actor", "action", "object_type", "object_id", "data")


@pytest_asyncio.fixture(loop_scope="session")
async def conn(service: Service) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(service.database_url)
    yield connection
    await connection.close()


@pytest_asyncio.fixture(loop_scope="session")
async def pool(settings: Settings) -> AsyncIterator[db.Pool]:
    created = await db.create_pool(settings)
    yield created
    await created.close()


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardsvc", *args],
        env={
            "DATABASE_URL": settings.database_url,
            "CARDSVC_ADMIN_TOKEN": "x" * 16,
            "CARDSVC_DATA_KEY": "00" * 32,
            **hsm_env(settings),
            "CARDSVC_AUDIT_ANCHOR_DIR": settings.audit_anchor_dir,
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


async def facility_entry(service: Service, conn: asyncpg.Connection) -> asyncpg.Record:
    facility = await service.facility()
    row = await conn.fetchrow(
        "SELECT chain, seq FROM audit_log WHERE object_type = 'facility' AND object_id = $1"
        " AND action = 'facility.created'",
        facility["fixmedins_code"],
    )
    assert row is not None
    return row


class ChainSnapshot:
    """One chain's rows and head as they were, to put back after a test rewrote them."""

    def __init__(self, rows: list[asyncpg.Record], head: asyncpg.Record) -> None:
        self.rows, self.head = rows, head

    @classmethod
    async def take(cls, conn: asyncpg.Connection, chain: int) -> ChainSnapshot:
        rows = await conn.fetch("SELECT * FROM audit_log WHERE chain = $1 ORDER BY seq", chain)
        head = await conn.fetchrow("SELECT * FROM audit_chains WHERE chain = $1", chain)
        return cls(list(rows), head)

    async def restore(self, conn: asyncpg.Connection) -> None:
        chain = self.head["chain"]
        async with conn.transaction():
            await conn.execute("DELETE FROM audit_log WHERE chain = $1", chain)
            columns = [*ENTRY_COLUMNS, "prev_hash", "hash"]
            await conn.copy_records_to_table(
                "audit_log",
                records=[tuple(r[c] for c in columns) for r in self.rows],
                columns=columns,
            )
            await conn.execute(
                "UPDATE audit_chains SET seq = $2, head = $3, prev_head = $4 WHERE chain = $1",
                chain,
                self.head["seq"],
                self.head["head"],
                self.head["prev_head"],
            )


async def rewrite_like_an_attacker(
    conn: asyncpg.Connection, chain: int, seq: int, new_data: str
) -> None:
    """Change one entry's data, then recompute every hash from it on and the chain head,
    exactly as the service would have: the chains alone cannot tell."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE audit_log SET data = $3 WHERE chain = $1 AND seq = $2", chain, seq, new_data
        )
        rows = await conn.fetch("SELECT * FROM audit_log WHERE chain = $1 ORDER BY seq", chain)
        prev, prev_of_last = GENESIS, GENESIS
        for row in rows:
            new_hash = entry_hash(prev, AuditEntry(**{c: row[c] for c in ENTRY_COLUMNS}))
            await conn.execute(
                "UPDATE audit_log SET prev_hash = $3, hash = $4 WHERE chain = $1 AND seq = $2",
                chain,
                row["seq"],
                prev,
                new_hash,
            )
            prev_of_last, prev = prev, new_hash
        await conn.execute(
            "UPDATE audit_chains SET head = $2, prev_head = $3 WHERE chain = $1",
            chain,
            prev,
            prev_of_last,
        )


async def cut_tail_like_an_attacker(conn: asyncpg.Connection, chain: int, keep: int) -> None:
    """Delete the chain's entries after ``keep`` and rewind its head to match."""
    async with conn.transaction():
        await conn.execute("DELETE FROM audit_log WHERE chain = $1 AND seq > $2", chain, keep)
        last = await conn.fetchrow(
            "SELECT prev_hash, hash FROM audit_log WHERE chain = $1 AND seq = $2", chain, keep
        )
        head, prev_head = (last["hash"], last["prev_hash"]) if last else (GENESIS, None)
        await conn.execute(
            "UPDATE audit_chains SET seq = $2, head = $3, prev_head = $4 WHERE chain = $1",
            chain,
            keep,
            head,
            prev_head,
        )


async def test_rewritten_entry_with_recomputed_hashes_is_caught_by_an_anchor(
    service: Service, conn: asyncpg.Connection, pool: db.Pool, settings: Settings
) -> None:
    entry = await facility_entry(service, conn)
    chain, seq = entry["chain"], entry["seq"]
    written = await service.admin_ok("POST", "/v1/audit/anchors")
    assert written["entries"] > 0 and written["file"].startswith("audit-anchors-")
    before = await service.admin_ok("GET", "/v1/audit/verify")
    assert before["ok"] is True and before["anchors_checked"] >= 1
    assert before["last_anchor_at"] == written["at"]
    original = await ChainSnapshot.take(conn, chain)
    row = next(r for r in original.rows if r["seq"] == seq)
    try:
        forged = row["data"].replace('"A"', '"D"')
        assert forged != row["data"]
        await rewrite_like_an_attacker(conn, chain, seq, forged)
        # The chains in themselves are consistent again: verification from the database
        # alone (what there was before anchors) says all is well.
        assert (await AuditLog(pool).verify()).ok is True

        verdict = await service.admin_ok("GET", "/v1/audit/verify")
        assert verdict["ok"] is False
        bad = verdict["first_bad"]
        assert bad["chain"] == chain
        assert bad["seq"] <= seq <= bad["to_seq"]  # the rewritten entry is in the named range
        assert bad["reason"] == "entries do not match the anchored chain head"
        assert bad["anchor_at"] is not None
        assert verdict["bad_anchors"] == 0  # the anchors are genuine; the chain is not

        result = cli(settings, "verify-audit")
        assert result.returncode == 1, result.stderr
        assert json.loads(result.stdout)["first_bad"]["chain"] == chain
    finally:
        await original.restore(conn)
    assert (await service.admin_ok("GET", "/v1/audit/verify"))["ok"] is True


async def test_cut_off_newest_entries_with_the_head_rewound_are_caught(
    service: Service, conn: asyncpg.Connection, pool: db.Pool
) -> None:
    entry = await facility_entry(service, conn)
    chain = entry["chain"]
    await service.admin_ok("POST", "/v1/audit/anchors")
    original = await ChainSnapshot.take(conn, chain)
    last = original.head["seq"]
    keep = max(0, last - 2)
    try:
        await cut_tail_like_an_attacker(conn, chain, keep)
        assert (await AuditLog(pool).verify()).ok is True  # the chains alone cannot tell

        verdict = await service.admin_ok("GET", "/v1/audit/verify")
        assert verdict["ok"] is False
        bad = verdict["first_bad"]
        assert (bad["chain"], bad["seq"]) == (chain, keep + 1)
        # The first anchored head the chain lost: the newest anchor's, or an earlier
        # anchor's (earlier tests anchored this chain too) between the cut and it.
        assert keep < bad["to_seq"] <= last
        assert bad["reason"].startswith("entry missing")
    finally:
        await original.restore(conn)
    assert (await service.admin_ok("GET", "/v1/audit/verify"))["ok"] is True


async def test_forged_or_unreadable_anchors_are_reported_and_not_trusted(
    service: Service, conn: asyncpg.Connection, settings: Settings
) -> None:
    written = await service.admin_ok("POST", "/v1/audit/anchors")
    path = Path(settings.audit_anchor_dir) / written["file"]
    original = path.read_text()
    lines = original.splitlines()
    number, line = next(
        (i, text) for i, text in enumerate(lines, 1) if json.loads(text)["at"] == written["at"]
    )
    # Claim a chain is longer than it is, keeping the old MAC: an attacker cannot make a new one.
    document = json.loads(line)
    document["heads"][5][1] += 1000
    lines[number - 1] = json.dumps(document, separators=(",", ":"))
    try:
        path.write_text("\n".join(lines) + "\n")
        verdict = await service.admin_ok("GET", "/v1/audit/verify")
        assert verdict["ok"] is False
        assert verdict["first_bad"] is None  # the forged anchor is not evidence
        assert verdict["bad_anchors"] == 1
        assert verdict["first_bad_anchor"] == {
            "source": f"{path.name}:{number}",
            "at": written["at"],
            "reason": "MAC does not verify: not the HSM's anchor",
        }
        result = cli(settings, "verify-audit", "--anchors", str(path))
        assert result.returncode == 1, result.stderr
        assert f"{path.name}:{number}" in result.stdout

        path.write_text(original + "not an anchor\n")
        verdict = await service.admin_ok("GET", "/v1/audit/verify")
        assert verdict["ok"] is False and verdict["bad_anchors"] == 1
        assert verdict["first_bad_anchor"]["source"] == f"{path.name}:{len(lines) + 1}"
        assert verdict["first_bad_anchor"]["at"] is None
    finally:
        path.write_text(original)
    # A row forged in the database is reported too.
    forged = line.replace(document["mac"], "0" * 32)
    await conn.execute("INSERT INTO audit_anchors (at, line) VALUES (now(), $1)", forged)
    try:
        verdict = await service.admin_ok("GET", "/v1/audit/verify")
        assert verdict["ok"] is False and verdict["bad_anchors"] == 1
        assert verdict["first_bad_anchor"]["source"] == "database"
    finally:
        await conn.execute("DELETE FROM audit_anchors WHERE line = $1", forged)
    assert (await service.admin_ok("GET", "/v1/audit/verify"))["ok"] is True


async def test_the_anchor_key_stays_in_the_hsm(
    service: Service,
    conn: asyncpg.Connection,
    settings: Settings,
    hsm: HsmProcess,
    capfd: pytest.CaptureFixture[str],
) -> None:
    written = await service.admin_ok("POST", "/v1/audit/anchors")
    verdict = await service.admin_ok("GET", "/v1/audit/verify")
    keystore = json.loads((hsm.keystore_dir / "keystore.json").read_text())
    blob = bytes.fromhex(keystore["audit_anchor"])
    key = unwrap_key(bytes.fromhex(hsm.lmk_hex), KeyType.AUDIT_ANCHOR, blob)
    line = await conn.fetchval("SELECT line FROM audit_anchors ORDER BY at DESC LIMIT 1")
    anchor, signed = parse_line(line)
    assert signed == message(anchor.at, anchor.heads)
    assert profile.sm4_cmac(key, signed) == anchor.mac  # MACed under the HSM's key
    exported = (Path(settings.audit_anchor_dir) / written["file"]).read_text()
    stored = await conn.fetchval("SELECT string_agg(line, '') FROM audit_anchors")
    logged = "".join(capfd.readouterr()) + hsm.log_path.read_text()
    for text in (exported, stored, logged, json.dumps(written), json.dumps(verdict)):
        assert key.hex() not in text and blob.hex() not in text


async def test_anchoring_rides_out_an_hsm_outage_and_one_worker_anchors_at_a_time(
    pool: db.Pool, settings: Settings, hsm: HsmProcess, tmp_path: Path
) -> None:
    async with hsm_client(settings, timeout=0.5) as client:

        def anchors(interval: float) -> AuditAnchors:
            return AuditAnchors(pool, client, AuditLog(pool), tmp_path, interval=interval)

        def delayed() -> float:
            labels = {"outcome": "hsm_unavailable"}
            return REGISTRY.get_sample_value("cardsvc_audit_anchors_total", labels) or 0.0

        delayed_before = delayed()
        task = asyncio.create_task(anchors(0.2).run_periodically())
        try:
            hsm.stop()
            try:
                await asyncio.sleep(1.5)
                assert not task.done()  # the background task did not die with the HSM
                assert delayed() > delayed_before
                assert list(tmp_path.iterdir()) == []
            finally:
                hsm.start()
            deadline = time.monotonic() + 10
            while not list(tmp_path.iterdir()):
                assert time.monotonic() < deadline, "no anchor after the HSM came back"
                await asyncio.sleep(0.1)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        # Two workers due at once: one anchors, the other finds it busy or done and skips.
        # (Rows only: the anchors stay in the export files, which are what counts.)
        await pool.execute("DELETE FROM audit_anchors WHERE at > now() - interval '1 hour'")
        results = await asyncio.gather(*(anchors(3600).anchor_when_due() for _ in range(2)))
        assert sorted(results) == [False, True]
        # A fresh row someone wrote into the table does not make the next one look done.
        line = await pool.fetchval("SELECT line FROM audit_anchors ORDER BY at DESC LIMIT 1")
        document = json.loads(line)
        document["at"] = dt.datetime.now(dt.UTC).isoformat()
        await pool.execute(
            "INSERT INTO audit_anchors (at, line) VALUES (now(), $1)", json.dumps(document)
        )
        try:
            assert await anchors(3600).anchor_when_due() is True
        finally:
            await pool.execute("DELETE FROM audit_anchors WHERE line = $1", json.dumps(document))


async def test_an_unwritable_export_folder_is_a_clear_error_and_writes_no_row(
    pool: db.Pool, settings: Settings, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    async with hsm_client(settings) as client:
        anchors = AuditAnchors(pool, client, AuditLog(pool), blocker / "anchors")
        rows_before = await pool.fetchval("SELECT count(*) FROM audit_anchors")
        with pytest.raises(AnchorExportUnavailable) as caught:
            await anchors.anchor()
        assert caught.value.status == 503
        assert caught.value.code == "AUDIT_ANCHOR_EXPORT_UNAVAILABLE"
        assert await anchors.anchor_when_due() is False  # the background task just logs it
        assert await pool.fetchval("SELECT count(*) FROM audit_anchors") == rows_before


async def test_a_session_holding_the_anchor_lock_is_counted_reported_and_refused_quickly(
    pool: db.Pool,
    settings: Settings,
    service: Service,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A database writer holding the anchoring lock in an idle session: every turn is
    counted as busy, the age of the newest genuine anchor grows past two intervals and is
    warned about, and anchoring by hand answers 409 at once instead of waiting."""

    def busy() -> float:
        labels = {"outcome": "busy"}
        return REGISTRY.get_sample_value("cardsvc_audit_anchors_total", labels) or 0.0

    def age() -> float:
        return REGISTRY.get_sample_value("cardsvc_audit_last_anchor_age_seconds") or 0.0

    holder = await asyncpg.connect(settings.database_url)
    async with hsm_client(settings) as client:
        anchors = AuditAnchors(pool, client, AuditLog(pool), tmp_path, interval=0.05)
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", 0x61756469)
            await asyncio.sleep(0.2)  # more than two intervals since the last anchor
            capfd.readouterr()
            before = busy()
            assert await anchors.anchor_when_due() is False
            assert busy() == before + 1
            assert age() > 0.1
            assert "audit.anchor_stale" in capfd.readouterr().out
            assert list(tmp_path.iterdir()) == []

            started = time.monotonic()
            status, body = await service.admin("POST", "/v1/audit/anchors")
            assert status == 409, body
            assert body["error"]["code"] == "AUDIT_ANCHOR_BUSY"
            assert time.monotonic() - started < settings.db_command_timeout / 2
        finally:
            await holder.close()
        # The lock released: the next turn anchors, and the age is back near zero.
        assert await anchors.anchor_when_due() is True
        assert age() < 0.05


async def test_a_settlement_row_changed_behind_the_service_is_named(
    service: Service, conn: asyncpg.Connection
) -> None:
    """Settlement rows are not hashed; what their batch's audit entry recorded is. A row
    changed (consistently with its own checks) or deleted in the database is named."""
    await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})
    facility = await service.facility()
    pos = await service.terminal("pos", facility["fixmedins_code"])
    p = await patient(service, pos, await service.terminal("counter"), balance=500)
    settled = await p.settle("310", "11", lines(("A-AMOX", 3000, 1)))
    row = await conn.fetchrow(
        "SELECT setl_id, acct_pay, psn_cash_pay FROM settlements WHERE setl_id = $1",
        settled["setl_id"],
    )
    assert row["acct_pay"] == 500 and row["psn_cash_pay"] > 0
    before = await service.admin_ok("GET", "/v1/audit/verify")
    assert before["ok"] is True and before["settlements_checked"] >= 1
    await conn.execute(
        "UPDATE settlements SET acct_pay = acct_pay + 1, psn_cash_pay = psn_cash_pay - 1"
        " WHERE setl_id = $1",
        row["setl_id"],
    )
    try:
        verdict = await service.admin_ok("GET", "/v1/audit/verify")
        assert verdict["ok"] is False and verdict["first_bad"] is None
        changed = verdict["first_changed_settlement"]
        assert (changed["setl_id"], changed["fields"]) == (
            row["setl_id"],
            ["acct_pay", "psn_cash_pay"],
        )
    finally:
        await conn.execute(
            "UPDATE settlements SET acct_pay = $2, psn_cash_pay = $3 WHERE setl_id = $1",
            row["setl_id"],
            row["acct_pay"],
            row["psn_cash_pay"],
        )
    assert (await service.admin_ok("GET", "/v1/audit/verify"))["ok"] is True
