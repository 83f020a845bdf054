"""Terminal authentication hardening (issue #11, item 11): header bytes that are not
UTF-8, sessions ended by disabling a terminal, sign-in rate limits, and the order of the
checks of a signed request (the body is read last)."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
import pytest_asyncio
from aiohttp import web

from cardcrypto import profile
from cardsvc.app import create_app
from cardsvc.config import Settings
from cardsvc.terminal_sdk.client import TerminalClient
from tests.conftest import free_port
from tests.support.api import Service

pytestmark = pytest.mark.asyncio(loop_scope="session")

PATH = "/v1/card-auth/challenge"
BODY = msgspec.json.encode({"card_no": "A00000000", "purpose": "identify"})


def _code(resp: Any) -> str:
    return str(resp.body["error"]["code"])


async def _raw(base_url: str, head: bytes, body: bytes = b"", within: float = 5.0) -> Any:
    """Write ``head`` (request line and headers, CRLF-separated, without the blank line)
    and ``body`` on a socket of our own, as bytes; the answer as (status, headers, JSON)."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        async with asyncio.timeout(within):
            status_line = await reader.readline()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            payload = await reader.readexactly(int(headers["content-length"]))
    finally:
        writer.close()
    return int(status_line.split()[1]), headers, msgspec.json.decode(payload)


def _signed_head(
    client: TerminalClient, method: str, path: str, body: bytes, **over: bytes
) -> bytes:
    """The request line and signed headers, with any header replaced by raw bytes."""
    headers = {k: v.encode() for k, v in client.signed_headers(method, path, body).items()}
    headers.update({k.replace("_", "-"): v for k, v in over.items()})
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: cardsvc"]
    lines += [k.encode() + b": " + v for k, v in headers.items()]
    lines += [b"Content-Type: application/json", f"Content-Length: {len(body)}".encode()]
    return b"\r\n".join(lines)


@pytest_asyncio.fixture(loop_scope="session")
async def counter(service: Service) -> TerminalClient:
    client = await service.terminal("counter")
    assert (
        await client.request("POST", PATH, {"card_no": "A00000000", "purpose": "identify"})
    ).status == 404
    return client


# --- a. header bytes that are not UTF-8 -----------------------------------------------


async def test_admin_header_not_utf8_is_401(service: Service):
    for token in (b"Bearer \xff\xfe\xfd-not-utf-8", b"\xc3\x28", b"Bearer tok\x80en"):
        head = b"GET /v1/audit/verify HTTP/1.1\r\nHost: cardsvc\r\nAuthorization: " + token
        status, _, body = await _raw(service.base_url, head)
        assert status == 401, body
        assert body["error"]["code"] == "AUTHORIZATION_HEADER_INVALID"


@pytest.mark.parametrize("header", ["X_Terminal_Id", "X_Session_Id", "X_Timestamp", "X_Signature"])
async def test_signed_header_not_utf8_is_401(
    service: Service, counter: TerminalClient, header: str
):
    head = _signed_head(counter, "POST", PATH, BODY, **{header: b"\xff\xfe" + b"a" * 30})
    status, _, body = await _raw(service.base_url, head, BODY)
    assert status == 401, body
    assert body["error"]["code"] == "SIGNATURE_HEADER_INVALID"
    assert body["error"]["details"]["headers"] == [header.replace("_", "-")]


# --- b. disabling a terminal ends its sessions --------------------------------------


async def _set_status(service: Service, terminal_id: str, status: str) -> None:
    await service.admin_ok("PATCH", f"/v1/terminals/{terminal_id}", {"status": status})


async def test_disabling_ends_sessions_and_enabling_does_not_revive_them(
    service: Service, counter: TerminalClient
):
    old = counter.session_id
    await _set_status(service, counter.terminal_id, "disabled")
    await _set_status(service, counter.terminal_id, "active")
    # The session key is still in the service's cache: the admission refuses it.
    resp = await counter.send("POST", PATH, BODY, counter.signed_headers("POST", PATH, BODY))
    assert resp.status == 401 and _code(resp) == "SESSION_ENDED", resp.body
    assert resp.body["error"]["details"] == {"reason": "terminal_disabled"}
    # ... and, dropped from the cache, the session lookup refuses it as well.
    resp = await counter.send("POST", PATH, BODY, counter.signed_headers("POST", PATH, BODY))
    assert resp.status == 401 and _code(resp) == "SESSION_ENDED", resp.body
    # The SDK signs in again by itself.
    resp = await counter.request("POST", PATH, {"card_no": "A00000000", "purpose": "identify"})
    assert resp.status == 404 and counter.session_id != old


async def test_a_disabled_terminal_is_still_told_it_is_disabled(
    service: Service, counter: TerminalClient
):
    await _set_status(service, counter.terminal_id, "disabled")
    for _ in range(2):  # from the cache, then from the database
        resp = await counter.send("POST", PATH, BODY, counter.signed_headers("POST", PATH, BODY))
        assert resp.status == 403 and _code(resp) == "TERMINAL_DISABLED", resp.body
    await _set_status(service, counter.terminal_id, "active")
    resp = await counter.send("POST", PATH, BODY, counter.signed_headers("POST", PATH, BODY))
    assert resp.status == 401 and _code(resp) == "SESSION_ENDED", resp.body


async def test_disabling_is_in_the_audit_log_with_the_sessions_it_ended(
    service: Service, counter: TerminalClient
):
    await _set_status(service, counter.terminal_id, "disabled")
    conn = await asyncpg.connect(service.database_url)
    try:
        data = await conn.fetchval(
            "SELECT data FROM audit_log WHERE object_id = $1 AND action = 'terminal.disabled'",
            counter.terminal_id,
        )
        ended = await conn.fetchval(
            "SELECT count(*) FROM terminal_sessions WHERE terminal_id = $1"
            " AND ended_reason = 'terminal_disabled'",
            counter.terminal_id,
        )
    finally:
        await conn.close()
    # Who disabled it: the operator, by id and name, in the chained entry.
    audited = msgspec.json.decode(data)
    assert audited.pop("operator_id").startswith("OP") and audited.pop("operator_name")
    assert audited == {"sessions_ended": 1} and ended == 1


async def test_a_sign_in_racing_a_disabling_does_not_outlive_it(service: Service):
    """The disabling holds the terminal's row while the sign-in is past its challenge and
    the HSM: the session is not opened (on the code before, it was, and outlived it)."""
    reg = await service.admin_ok("POST", "/v1/terminals", {"kind": "counter"})
    terminal_id, key = reg["terminal_id"], bytes.fromhex(reg["terminal_key"])
    client = TerminalClient(service.http, service.base_url, terminal_id, key)
    started = await client.send(
        "POST", "/v1/terminals/sign-in", msgspec.json.encode({"terminal_id": terminal_id})
    )
    rs, rt = bytes.fromhex(started.body["challenge"]), os.urandom(16)
    complete = msgspec.json.encode(
        {
            "terminal_id": terminal_id,
            "challenge": rs.hex(),
            "terminal_random": rt.hex(),
            "cryptogram": profile.terminal_cryptogram(key, rs, rt).hex(),
        }
    )
    conn = await asyncpg.connect(service.database_url)
    try:
        async with conn.transaction():  # what disabling does, held open
            await conn.execute(
                "UPDATE terminals SET status = 'disabled' WHERE terminal_id = $1", terminal_id
            )
            signing_in = asyncio.create_task(
                client.send("POST", "/v1/terminals/sign-in/complete", complete)
            )
            await asyncio.sleep(0.5)
            await conn.execute(
                "UPDATE terminal_sessions SET ended_at = now(),"
                " ended_reason = 'terminal_disabled'"
                " WHERE terminal_id = $1 AND ended_at IS NULL",
                terminal_id,
            )
        resp = await signing_in
        opened = await conn.fetchval(
            "SELECT count(*) FROM terminal_sessions WHERE terminal_id = $1 AND ended_at IS NULL",
            terminal_id,
        )
    finally:
        await conn.close()
    assert resp.status == 401 and _code(resp) == "CHALLENGE_INVALID", resp.body
    assert opened == 0


# --- c. sign-in challenges are rate limited -----------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def strict(settings: Settings) -> AsyncIterator[str]:
    """The service with small sign-in allowances: 6 challenges per address, 3 failed
    sign-ins per terminal."""
    limited = msgspec.structs.replace(
        settings,
        port=free_port(),
        sign_in_terminal_rate=0.01,
        sign_in_terminal_burst=3.0,
        sign_in_address_rate=0.01,
        sign_in_address_burst=6.0,
    )
    runner = web.AppRunner(create_app(limited))
    await runner.setup()
    await web.TCPSite(runner, limited.host, limited.port).start()
    try:
        yield f"http://{limited.host}:{limited.port}"
    finally:
        await runner.cleanup()


async def _start(http: aiohttp.ClientSession, base: str, terminal_id: str, **headers: str) -> Any:
    async with http.post(
        base + "/v1/terminals/sign-in", json={"terminal_id": terminal_id}, headers=headers
    ) as resp:
        return resp.status, resp.headers.get("Retry-After"), await resp.json()


async def test_an_anonymous_flood_of_challenges_does_not_lock_a_terminal_out(
    service: Service, strict: str
):
    """Anybody can name a terminal id (they are sequential): asking for its challenges
    costs that terminal nothing. Only the address's allowance is spent."""
    reg = await service.admin_ok("POST", "/v1/terminals", {"kind": "kiosk"})
    for _ in range(5):  # more than the terminal's allowance of failed sign-ins (3)
        assert (await _start(service.http, strict, reg["terminal_id"]))[0] == 200
    genuine = TerminalClient(
        service.http, strict, reg["terminal_id"], bytes.fromhex(reg["terminal_key"])
    )
    await genuine.sign_in()
    assert genuine.session_id


async def test_a_flood_keeps_a_bounded_number_of_challenges(service: Service):
    """A terminal keeps its newest 16 live challenges: one taken before a smaller flood
    still completes, and a flood never grows the table beyond 16 rows per terminal."""
    reg = await service.admin_ok("POST", "/v1/terminals", {"kind": "kiosk"})
    terminal_id, key = reg["terminal_id"], bytes.fromhex(reg["terminal_key"])
    mine = (await _start(service.http, service.base_url, terminal_id))[2]["challenge"]
    for _ in range(10):
        assert (await _start(service.http, service.base_url, terminal_id))[0] == 200
    rs, rt = bytes.fromhex(mine), os.urandom(16)
    async with service.http.post(
        service.base_url + "/v1/terminals/sign-in/complete",
        json={
            "terminal_id": terminal_id,
            "challenge": mine,
            "terminal_random": rt.hex(),
            "cryptogram": profile.terminal_cryptogram(key, rs, rt).hex(),
        },
    ) as resp:
        assert resp.status == 200, await resp.text()
    for _ in range(40):
        await _start(service.http, service.base_url, terminal_id)
    conn = await asyncpg.connect(service.database_url)
    try:
        kept = await conn.fetchval(
            "SELECT count(*) FROM sign_in_challenges WHERE terminal_id = $1", terminal_id
        )
    finally:
        await conn.close()
    assert kept == 16


async def test_successful_sign_ins_spend_no_allowance(service: Service, strict: str):
    reg = await service.admin_ok("POST", "/v1/terminals", {"kind": "kiosk"})
    genuine = TerminalClient(
        service.http, strict, reg["terminal_id"], bytes.fromhex(reg["terminal_key"])
    )
    for _ in range(5):  # more than the 3 failed sign-ins a terminal is allowed
        await genuine.sign_in()


async def test_failed_sign_ins_are_limited_per_terminal(service: Service, strict: str):
    reg = await service.admin_ok("POST", "/v1/terminals", {"kind": "kiosk"})
    impostor = TerminalClient(service.http, strict, reg["terminal_id"], os.urandom(16))
    codes = []
    for _ in range(4):
        try:
            await impostor.sign_in()
        except Exception as exc:
            codes.append(getattr(exc, "code", repr(exc)))
    assert codes == ["CRYPTOGRAM_INVALID"] * 3 + ["RATE_LIMITED"]
    other = await service.admin_ok("POST", "/v1/terminals", {"kind": "kiosk"})
    genuine = TerminalClient(
        service.http, strict, other["terminal_id"], bytes.fromhex(other["terminal_key"])
    )
    await genuine.sign_in()  # another terminal, same address: not held back


async def test_sign_in_challenges_are_limited_per_address_whatever_it_forwards(
    service: Service, strict: str
):
    statuses = []
    for n in range(8):  # a new terminal id each time, and a new forwarded address
        forwarded = {"X-Forwarded-For": f"10.0.0.{n}", "X-Real-IP": f"10.0.0.{n}"}
        statuses.append((await _start(service.http, strict, f"TX{n:07d}", **forwarded))[0])
    assert statuses.count(429) >= 2 and statuses[-1] == 429
    status, retry_after, body = await _start(service.http, strict, "TY0000000")
    assert status == 429 and body["error"]["code"] == "RATE_LIMITED" and retry_after
    assert "address" in body["error"]["message"]


# --- d. the session is checked before the body is read ------------------------------


async def test_bad_session_is_refused_without_reading_the_body(service: Service):
    head = "\r\n".join(
        [
            f"POST {PATH} HTTP/1.1",
            "Host: cardsvc",
            "X-Terminal-Id: T00000001",
            f"X-Session-Id: {secrets.token_hex(16)}",
            f"X-Timestamp: {int(time.time())}",
            f"X-Nonce: {os.urandom(16).hex()}",
            f"X-Signature: {'0' * 64}",
            "Content-Type: application/json",
            "Content-Length: 200000",  # and the body never comes
        ]
    ).encode()
    started = time.monotonic()
    status, _, body = await _raw(service.base_url, head, within=3.0)
    assert status == 401 and body["error"]["code"] == "SESSION_INVALID"
    assert time.monotonic() - started < 2.0


async def test_disabled_terminal_is_refused_without_reading_the_body(
    service: Service, counter: TerminalClient
):
    await _set_status(service, counter.terminal_id, "disabled")
    # This worker still held the session's key: the admission refuses the request (after
    # its body) and drops the key ...
    resp = await counter.send("POST", PATH, BODY, counter.signed_headers("POST", PATH, BODY))
    assert resp.status == 403 and _code(resp) == "TERMINAL_DISABLED"
    # ... so from now on the session lookup refuses it, before any body is read.
    head = _signed_head(counter, "POST", PATH, b"")
    head = head.replace(b"Content-Length: 0", b"Content-Length: 200000")
    started = time.monotonic()
    status, _, body = await _raw(service.base_url, head, within=3.0)
    assert status == 403 and body["error"]["code"] == "TERMINAL_DISABLED"
    assert time.monotonic() - started < 2.0
