"""The generator's lean HTTP client (loadtest/wire.py) against a real aiohttp server:
signatures as the crypto profile says, answers of every shape the server sends, the
connection limit, timeouts and lost connections."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web

from cardcrypto import profile
from loadtest import wire

KEY = bytes(range(32))


def _parse(request: bytes) -> tuple[str, dict[str, str], bytes]:
    head, body = request.split(b"\r\n\r\n", 1)
    line, *fields = head.decode("ascii").split("\r\n")
    headers = dict(f.split(": ", 1) for f in fields)
    return line, headers, body


def test_signature_is_the_profiles_and_the_request_is_well_formed():
    signer = wire.Signer("127.0.0.1:8080", "T00000001", "S1", KEY)
    body = b'{"mdtrt_id":"M1","card_token":"t"}'
    extra = b"\r\nIdempotency-Key: LK1"
    for digest in (None, hashlib.sha256(body).hexdigest().encode("ascii")):
        line, headers, sent = _parse(signer.post(b"/v1/settlements", body, digest, extra))
        assert line == "POST /v1/settlements HTTP/1.1"
        assert sent == body
        assert headers["Content-Length"] == str(len(body))
        assert headers["Host"] == "127.0.0.1:8080"
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Terminal-Id"] == "T00000001"
        assert headers["X-Session-Id"] == "S1"
        assert headers["Idempotency-Key"] == "LK1"
        expected = profile.request_signature(
            KEY, "POST", "/v1/settlements", headers["X-Timestamp"], headers["X-Nonce"], body
        )
        assert headers["X-Signature"] == expected


def test_nonces_are_fresh_hex_of_16_bytes():
    nonces = wire.Nonces()
    drawn = [nonces.next() for _ in range(3 * wire.Nonces.BATCH)]
    assert len(set(drawn)) == len(drawn)
    assert all(len(n) == 32 and bytes.fromhex(n.decode()) for n in drawn)


async def _echo(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    mode = request.query.get("mode", "")
    if mode == "slow":
        await asyncio.sleep(5)
    if mode == "drop":
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(1)
    if mode == "chunked":
        resp = web.StreamResponse(status=201)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"part one, ")
        await resp.write(body)
        await resp.write_eof()
        return resp
    if mode == "port":
        assert request.transport is not None
        return web.json_response(request.transport.get_extra_info("peername")[1])
    if mode == "empty":
        return web.Response(status=204)
    resp = web.json_response({"got": body.decode()}, status=int(request.query.get("status", 200)))
    if mode == "close":
        resp.force_close()
    return resp


@pytest_asyncio.fixture
async def server() -> AsyncIterator[tuple[str, int]]:
    app = web.Application()
    app.router.add_post("/echo", _echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    yield "127.0.0.1", port
    await runner.cleanup()


def _request(host: str, port: int, query: str = "", body: bytes = b"{}") -> bytes:
    signer = wire.Signer(f"{host}:{port}", "T1", "S1", KEY)
    return signer.post(b"/echo" + query.encode(), body)


async def test_answers_with_a_length_chunked_or_no_body_and_connections_are_reused(server):
    host, port = server
    pool = wire.Pool(host, port, limit=4, timeout=5)
    try:
        assert await pool.request(_request(host, port, body=b'"a"')) == (
            200,
            b'{"got": "\\"a\\""}',
            None,
        )
        assert await pool.request(_request(host, port, "?status=409")) == (
            409,
            b'{"got": "{}"}',
            None,
        )
        assert await pool.request(_request(host, port, "?mode=chunked", b"xyz")) == (
            201,
            b"part one, xyz",
            None,
        )
        assert await pool.request(_request(host, port, "?mode=empty")) == (204, b"", None)
        assert pool.opened == 1  # one request at a time: the same connection each time
    finally:
        pool.close()


async def test_more_requests_than_connections_wait_their_turn(server):
    host, port = server
    pool = wire.Pool(host, port, limit=3, timeout=5)
    try:
        answers = await asyncio.gather(
            *(pool.request(_request(host, port, body=b"%d" % n)) for n in range(40))
        )
        assert [a[0] for a in answers] == [200] * 40
        assert [a[1] for a in answers] == [b'{"got": "%d"}' % n for n in range(40)]
        assert pool.opened <= 3
    finally:
        pool.close()


async def test_idle_connections_are_taken_in_turn(server):
    host, port = server
    pool = wire.Pool(host, port, limit=8, timeout=5)
    try:
        await pool.warm(3)
        ports = [(await pool.request(_request(host, port, "?mode=port")))[1] for _ in range(6)]
        assert len(set(ports)) == 3 and ports[:3] == ports[3:]
        assert pool.opened == 3
    finally:
        pool.close()


async def test_a_connection_the_server_closes_is_not_reused(server):
    host, port = server
    pool = wire.Pool(host, port, limit=2, timeout=5)
    try:
        assert (await pool.request(_request(host, port, "?mode=close")))[0] == 200
        assert (await pool.request(_request(host, port)))[0] == 200
        assert pool.opened == 2
    finally:
        pool.close()


async def test_no_answer_is_a_failure_named_once(server, monkeypatch):
    host, port = server
    monkeypatch.setattr(wire, "SWEEP_S", 0.05)
    pool = wire.Pool(host, port, limit=2, timeout=0.3)
    try:
        assert await pool.request(_request(host, port, "?mode=slow")) == (0, b"", "timeout")
        status, _, error = await pool.request(_request(host, port, "?mode=drop"))
        assert (status, error) == (0, "ServerDisconnected")
        assert (await pool.request(_request(host, port)))[0] == 200  # the pool goes on
    finally:
        pool.close()


async def test_a_refused_connection_fails_the_request():
    pool = wire.Pool("127.0.0.1", _free_port(), limit=2, timeout=2)
    try:
        status, _, error = await pool.request(_request("127.0.0.1", 1))
        assert status == 0 and error == "ConnectionRefusedError"
    finally:
        pool.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("garbage", [b"HTTP/1.0 200 OK\r\n\r\n", b"nonsense\r\n\r\n"])
async def test_an_answer_this_client_cannot_read_fails_the_request(garbage):
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(garbage)
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    srv = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    pool = wire.Pool("127.0.0.1", port, limit=1, timeout=5)
    try:
        assert await pool.request(_request("127.0.0.1", port)) == (0, b"", "BadResponse")
    finally:
        pool.close()
        srv.close()
        await srv.wait_closed()
