"""The data key a database belongs to (issue #11, item 12): cardsvc refuses to start with
another key, and ``python -m cardsvc rotate-data-key`` moves everything to a new key,
resumably. Each test has a database of its own and runs the real commands."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from cardsvc import db
from cardsvc.audit.services import AuditLog
from cardsvc.config import Settings
from cardsvc.datakey import services as datakey
from cardsvc.devenv.pgcluster import LocalCluster
from cardsvc.persons.models import CreatePerson
from cardsvc.persons.services import PersonRegistry
from cardsvc.privacy import DataProtector, DecryptionError, key_check_value
from cardsvc.terminal_sdk.client import TerminalClient
from cardsvc.web.caller import COMMAND_LINE
from tests.conftest import free_port
from tests.support.api import REGION, Service, issue_card, make_certno, random_birth_date
from tests.support.gateway import gateway_client
from tests.support.hsm import hsm_env
from tests.support.operators import create_operator

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]


def _new_database(pg_cluster: LocalCluster) -> str:
    name = f"datakey_{secrets.token_hex(4)}"
    pg_cluster.create_database(name)
    return pg_cluster.url(name)


def _env(settings: Settings, url: str, key: bytes, port: int = 0) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": url,
        "CARDSVC_ADMIN_TOKEN": settings.admin_token,
        "CARDSVC_DATA_KEY": key.hex(),
        **hsm_env(settings),
        "CARDSVC_PORT": str(port or free_port()),
        "CARDSVC_LOG_LEVEL": "warning",
    }


def _command(settings: Settings, url: str, key: bytes, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cardsvc", *args],
        env=_env(settings, url, key),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finished(proc: subprocess.Popen[str], within: float = 60.0) -> tuple[int, str, str]:
    """The command's exit code, stdout and stderr; fails if it is still running (a service
    that started)."""
    try:
        out, err = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the command did not exit (the service started?)") from None
    return proc.returncode, out, err


def _refused_serve(settings: Settings, url: str, key: bytes) -> str:
    """Run ``serve`` with ``key``: it must exit non-zero with one line on stderr; that line."""
    code, _, err = _finished(_command(settings, url, key, "serve"), within=30)
    assert code != 0
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@asynccontextmanager
async def _serving(settings: Settings, url: str, key: bytes) -> AsyncIterator[Service]:
    """``python -m cardsvc serve`` with ``key`` until the block ends (then SIGTERM)."""
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cardsvc", "serve"],
        env=_env(settings, url, key, port),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise AssertionError(f"cardsvc exited: {log.read().decode()}")
                assert time.monotonic() < deadline, "cardsvc did not become ready"
                try:
                    async with http.get(base + "/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            token = (await create_operator(url)).token
            yield Service(base, token, http, url, settings.admin_token)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


async def _persons_under(url: str, key: bytes, certnos: dict[str, str]) -> None:
    """Every person decrypts under ``key`` and its lookup hash is ``key``'s."""
    protector = DataProtector(key)
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT psn_no, certno_enc, certno_hash FROM persons")
    finally:
        await conn.close()
    assert {r["psn_no"] for r in rows} == set(certnos)
    for row in rows:
        number = protector.decrypt(row["certno_enc"], row["psn_no"].encode()).decode()
        assert number == certnos[row["psn_no"]]
        assert bytes(row["certno_hash"]) == protector.lookup_hash(number)


async def test_serve_refuses_a_key_other_than_the_databases(
    settings: Settings, pg_cluster: LocalCluster
) -> None:
    url = _new_database(pg_cluster)
    key_a, key_b = os.urandom(32), os.urandom(32)
    code, _, err = _finished(_command(settings, url, key_a, "migrate"))
    assert code == 0, err  # the first use records key A's check value

    line = _refused_serve(settings, url, key_b)
    assert line == (
        "cardsvc: CARDSVC_DATA_KEY does not match the key this database was created with"
        f" (check value {key_check_value(key_b)}, database has {key_check_value(key_a)})"
    )
    assert key_a.hex() not in line and key_b.hex() not in line


async def test_first_start_of_an_existing_database_records_only_the_key_of_its_data(
    pg_cluster: LocalCluster,
) -> None:
    """A database from before the check (no check value stored): a key that does not open
    its identity numbers is refused, the right one is recorded."""
    url = _new_database(pg_cluster)
    key_a, key_b = os.urandom(32), os.urandom(32)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await db.migrate(conn)
        registry = PersonRegistry(pool, DataProtector(key_a), AuditLog(pool))
        await registry.create(COMMAND_LINE, _create_person())
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM data_key") == 0
            with pytest.raises(datakey.DataKeyMismatch, match="does not decrypt"):
                await datakey.check(conn, key_b)
            assert await datakey.check(conn, key_a) == key_check_value(key_a)
            with pytest.raises(datakey.DataKeyMismatch, match="does not match"):
                await datakey.check(conn, key_b)
    finally:
        await pool.close()


def _create_person() -> CreatePerson:
    brdy = random_birth_date()
    return CreatePerson(
        certno=make_certno(brdy),
        psn_name="赵六",
        gend="1",
        brdy=brdy,
        admdvs=REGION,
        psn_type="in_service",
    )


async def test_rotation_end_to_end(
    settings: Settings, pg_cluster: LocalCluster, tmp_path: Path
) -> None:
    url = _new_database(pg_cluster)
    key_a, key_b = os.urandom(32), os.urandom(32)
    new_key_file = tmp_path / "new_key"
    new_key_file.write_text(key_b.hex() + "\n")
    rotate = ("rotate-data-key", "--new-key-file", str(new_key_file), "--batch-size", "2")

    async with _serving(settings, url, key_a) as service:
        persons = [await service.person() for _ in range(5)]
        gateway = await gateway_client(service)
        old_counter = await service.terminal("counter")
        card = await issue_card(old_counter, persons[0]["psn_no"])
        # While cardsvc serves, the rotation refuses to start.
        code, _, err = _finished(_command(settings, url, key_a, *rotate))
        assert code == 1 and "stop the service" in err, err
    certnos = {p["psn_no"]: p["certno_full"] for p in persons}
    await _persons_under(url, key_a, certnos)

    code, out, err = _finished(_command(settings, url, key_a, *rotate))
    assert code == 0, err
    assert "rotate-data-key: 5/5 persons re-encrypted" in err.splitlines()
    assert "1 terminal sessions ended" in out
    await _persons_under(url, key_b, certnos)

    line = _refused_serve(settings, url, key_a)
    assert f"database has {key_check_value(key_b)}" in line
    async with _serving(settings, url, key_b) as service:
        # Found by identity number: registering the same number again is refused.
        payload = {
            "certno": persons[1]["certno_full"],
            "psn_name": "张三",
            "gend": "1",
            "brdy": f"{persons[1]['certno_full'][6:10]}-{persons[1]['certno_full'][10:12]}"
            f"-{persons[1]['certno_full'][12:14]}",
            "admdvs": REGION,
            "psn_type": "in_service",
        }
        status, body = await service.admin("POST", "/v1/persons", payload)
        assert status == 409 and body["error"]["code"] == "PERSON_EXISTS", body
        # The old session was ended (its key was under key A); the terminal signs in again.
        path = f"/v1/cards/{card.card_no}"
        headers = old_counter.signed_headers("GET", path, b"")
        async with service.http.get(service.base_url + path, headers=headers) as resp:
            assert resp.status == 401
        counter = TerminalClient(
            service.http, service.base_url, old_counter.terminal_id, old_counter.terminal_key
        )
        await counter.sign_in()
        # Decrypted under key B: issuance writes the full number to EF06.
        issued = await counter.call("POST", "/v1/cards", {"psn_no": persons[1]["psn_no"]})
        assert bytes.fromhex(issued["records"]["ef06"]["08"]).decode() == payload["certno"]
        # The gateway client's secret was re-encrypted: its signature still checks.
        gateway.service = service
        assert (await gateway.call("9001", {"signIn": {"opter_no": "1"}})).infcode == 0

    # Run again after it finished: nothing to do, still key B.
    code, out, err = _finished(_command(settings, url, key_a, *rotate))
    assert code == 0, err
    assert out.startswith("data key was already rotated: 5 persons under check value")
    assert f"check value {key_check_value(key_b)}" in out


class _Crash(Exception):
    pass


async def test_an_interrupted_rotation_is_finished_by_running_it_again(
    settings: Settings, pg_cluster: LocalCluster, tmp_path: Path
) -> None:
    url = _new_database(pg_cluster)
    key_a, key_b = os.urandom(32), os.urandom(32)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await db.migrate(conn)
            await datakey.check(conn, key_a)
        registry = PersonRegistry(pool, DataProtector(key_a), AuditLog(pool))
        requests = [_create_person() for _ in range(7)]
        certnos = {(await registry.create(COMMAND_LINE, r)).psn_no: r.certno for r in requests}
    finally:
        await pool.close()

    def crash_after_two_batches(done: int, total: int) -> None:
        if done >= 4:
            raise _Crash

    conn = await asyncpg.connect(url)
    try:
        with pytest.raises(_Crash):
            await datakey.rotate(conn, key_a, key_b, batch_size=2, progress=crash_after_two_batches)
        state = await conn.fetchrow("SELECT * FROM data_key")
        assert state["check_value"] == key_check_value(key_a)
        assert state["rotating_to"] == key_check_value(key_b)
        rows = await conn.fetch("SELECT psn_no, certno_enc FROM persons ORDER BY psn_no")
        # Another new key cannot take over a rotation under way.
        with pytest.raises(datakey.RotationRefused, match="another key"):
            await datakey.rotate(conn, key_a, os.urandom(32))
    finally:
        await conn.close()
    # Exactly the persons up to rotated_through are under the new key.
    done = [r for r in rows if r["psn_no"] <= state["rotated_through"]]
    assert len(done) == 4
    for row in rows:
        key = key_b if row in done else key_a
        DataProtector(key).decrypt(row["certno_enc"], row["psn_no"].encode())
        with pytest.raises(DecryptionError):
            DataProtector(key_a if key == key_b else key_b).decrypt(
                row["certno_enc"], row["psn_no"].encode()
            )

    # Neither key may serve a half-rotated database.
    for key in (key_a, key_b):
        line = _refused_serve(settings, url, key)
        assert "rotation" in line and "not finished" in line, line

    new_key_file = tmp_path / "new_key"
    new_key_file.write_text(key_b.hex())
    code, _, err = _finished(
        _command(settings, url, key_a, "rotate-data-key", "--new-key-file", str(new_key_file))
    )
    assert code == 0, err
    assert err.splitlines()[0] == "rotate-data-key: 4/7 persons re-encrypted"
    assert "rotate-data-key: 7/7 persons re-encrypted" in err.splitlines()
    await _persons_under(url, key_b, certnos)
    conn = await asyncpg.connect(url)
    try:
        assert await datakey.check(conn, key_b) == key_check_value(key_b)
    finally:
        await conn.close()
