"""A lean HTTP/1.1 client for the generator's timed requests: signed bytes in, status out.

A general client (aiohttp) builds header objects, a request object, a response object, a
timer and a task for every request; at a few hundred requests a second that is a fair share
of a core, and the generator's CPU counts against the service's. The timed phase needs far
less: ``Signer`` turns a prepared body into the request's bytes (the terminal session's
HMAC key state is computed once, the canonical request is formed as the crypto profile says,
docs/protocol.md), and ``Pool`` writes them on a kept-alive connection and calls back with
the status and the body when the answer is complete. No task, future or timer per request:
one sweep every ``SWEEP_S`` fails requests past their timeout. Sign-in stays on the
terminal SDK's client (untimed, once per session).

The responses it reads are cardsvc's (aiohttp's server): a status line, headers and a body
of ``Content-Length`` bytes or chunked. One request at a time per connection (no
pipelining: a stalled answer must not hold up the next request); a connection the server
closes, or marks ``Connection: close``, is dropped and a new one opened when needed.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from typing import cast

# (status, body, error): status 0 with an error name when no answer came.
Done = Callable[[int, bytes, str | None], None]

SWEEP_S = 0.25  # how often requests past their timeout are failed
IDLE_S = 50.0  # a connection idle this long is closed (the server drops them after 75 s)
_NO_BODY = frozenset({204, 304})


class BadResponse(Exception):
    """The server's answer was not HTTP/1.1 this client can read."""


class Nonces:
    """Random 16-byte nonces as hex, drawn from the OS ``BATCH`` at a time: one
    ``getrandom`` call for thousands of requests instead of one each."""

    BATCH = 4096

    def __init__(self) -> None:
        self._hex = b""
        self._at = 0

    def next(self) -> bytes:
        if self._at >= len(self._hex):
            self._hex, self._at = os.urandom(16 * self.BATCH).hex().encode("ascii"), 0
        at = self._at
        self._at = at + 32
        return self._hex[at : at + 32]


_nonces = Nonces()


class Signer:
    """One terminal session's request signer (crypto profile: hex HMAC-SHA256 over
    ``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nhex(SHA-256(body))``)."""

    def __init__(self, host: str, terminal_id: str, session_id: str, session_key: bytes) -> None:
        self._mac = hmac.new(session_key, digestmod=hashlib.sha256)  # key pads, once
        self._head = (
            f"\r\nHost: {host}\r\nContent-Type: application/json"
            f"\r\nX-Terminal-Id: {terminal_id}\r\nX-Session-Id: {session_id}\r\nX-Timestamp: "
        ).encode("ascii")
        self._second = -1
        self._ts = b""

    def post(
        self, path: bytes, body: bytes, digest: bytes | None = None, extra: bytes = b""
    ) -> bytes:
        """The whole ``POST`` request. ``digest``: hex SHA-256 of ``body`` if already known;
        ``extra``: more header lines, each starting with ``\\r\\n``."""
        now = int(time.time())
        if now != self._second:
            self._second, self._ts = now, str(now).encode("ascii")
        nonce = _nonces.next()
        if digest is None:
            digest = hashlib.sha256(body).hexdigest().encode("ascii")
        mac = self._mac.copy()
        mac.update(b"POST\n%s\n%s\n%s\n%s" % (path, self._ts, nonce, digest))
        signature = mac.hexdigest().encode("ascii")
        head = b"POST %s HTTP/1.1%s%s\r\nX-Nonce: %s\r\nX-Signature: %s" % (
            path,
            self._head,
            self._ts,
            nonce,
            signature,
        )
        return b"%s%s\r\nContent-Length: %d\r\n\r\n%s" % (head, extra, len(body), body)


class _Connection(asyncio.Protocol):
    """One kept-alive connection carrying one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.done: Done | None = None
        self.deadline = 0.0
        self.idle_since = 0.0
        self.buf = bytearray()
        self.body_at = -1  # where the body starts, once the head is read
        self.end = -1  # where the answer ends (-1: chunked or not known yet)
        self.status = 0
        self.chunked = False
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, data: bytes, done: Done, deadline: float) -> None:
        self.done, self.deadline = done, deadline
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.done is None:  # nothing asked: the server has nothing to say
            self.fail("BadResponse")
            return
        buf = self.buf
        buf += data
        try:
            if self.body_at < 0 and not self._head():
                return
            if self.chunked:
                body = self._chunked()
                if body is None:
                    return
            else:
                if len(buf) < self.end:
                    return
                if len(buf) > self.end:
                    raise BadResponse("more than one answer")
                body = bytes(buf[self.body_at :])
        except (BadResponse, ValueError):
            self.fail("BadResponse")
            return
        done, status = self.done, self.status
        self._reset()
        if self.close_after:
            self.pool.forget(self)
            assert self.transport is not None
            self.transport.close()
        else:
            self.pool.release(self)
        done(status, body, None)

    def _head(self) -> bool:
        buf = self.buf
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            return False
        head = bytes(buf[:head_end]).lower()
        if not head.startswith(b"http/1.1 "):
            raise BadResponse("not HTTP/1.1")
        self.status = int(head[9:12])
        self.body_at = head_end + 4
        self.close_after = b"\r\nconnection: close" in head
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            self.end = self.body_at + length
        elif b"\r\ntransfer-encoding: chunked" in head:
            self.chunked = True
        elif self.status in _NO_BODY or self.status < 200:
            self.end = self.body_at
        else:
            raise BadResponse("no length")
        return True

    def _chunked(self) -> bytes | None:
        """The body once every chunk is in, else None."""
        buf, at = self.buf, self.body_at
        parts: list[bytes] = []
        while True:
            line_end = buf.find(b"\r\n", at)
            if line_end < 0:
                return None
            size = int(bytes(buf[at:line_end]).split(b";", 1)[0], 16)
            if size == 0:  # the last chunk; no trailers (cardsvc sends none)
                return b"".join(parts) if len(buf) >= line_end + 4 else None
            start = line_end + 2
            if len(buf) < start + size + 2:
                return None
            parts.append(bytes(buf[start : start + size]))
            at = start + size + 2

    def _reset(self) -> None:
        self.done = None
        self.buf = bytearray()
        self.body_at = self.end = -1
        self.chunked = False

    def fail(self, error: str) -> None:
        """Give up on this connection and its request (if any)."""
        done = self.done
        self._reset()
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()
        if done is not None:
            done(0, b"", error)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        done = self.done
        self._reset()
        if done is not None:
            done(0, b"", "ServerDisconnected" if exc is None else type(exc).__name__)


class Pool:
    """Kept-alive connections to one server, at most ``limit``; requests beyond wait in
    order. Each request gets ``done`` exactly once: the answer, or a failure (its timeout,
    the connection lost, a connect error)."""

    def __init__(self, host: str, port: int, limit: int, timeout: float) -> None:
        self.host, self.port, self.limit, self.timeout = host, port, limit, timeout
        self._loop = asyncio.get_running_loop()
        # Idle connections, least recently used first, and taken in that order (as aiohttp
        # does): the requests go round every connection, so round both service workers.
        self._idle: collections.deque[_Connection] = collections.deque()
        self._busy: set[_Connection] = set()
        self._opening = 0
        self._waiting: collections.deque[tuple[bytes, Done, float]] = collections.deque()
        self._clock = time.perf_counter
        self._sweeper: asyncio.TimerHandle | None = self._loop.call_later(SWEEP_S, self._sweep)
        self.opened = 0  # connections opened, for the report

    @property
    def open_connections(self) -> int:
        return len(self._idle) + len(self._busy) + self._opening

    def send(self, data: bytes, done: Done) -> None:
        deadline = self._clock() + self.timeout
        if self._idle:
            conn = self._idle.popleft()
            self._busy.add(conn)
            conn.send(data, done, deadline)
        elif self.open_connections < self.limit:
            self._opening += 1
            self._loop.create_task(self._connect(data, done, deadline))
        else:
            self._waiting.append((data, done, deadline))

    async def request(self, data: bytes) -> tuple[int, bytes, str | None]:
        """``send`` for a coroutine: waits for the outcome."""
        got: asyncio.Future[tuple[int, bytes, str | None]] = self._loop.create_future()

        def done(status: int, body: bytes, error: str | None) -> None:
            if not got.done():
                got.set_result((status, body, error))

        self.send(data, done)
        return await got

    async def warm(self, count: int) -> None:
        """Open up to ``count`` connections before they are needed (untimed)."""
        want = min(count, self.limit) - self.open_connections
        if want <= 0:
            return
        self._opening += want
        conns = await asyncio.gather(*(self._open() for _ in range(want)), return_exceptions=True)
        self._opening -= want
        now = self._clock()
        for conn in conns:
            if isinstance(conn, _Connection):
                conn.idle_since = now
                self._idle.append(conn)
        self._drain_waiting()

    async def _open(self) -> _Connection:
        _, conn = await self._loop.create_connection(
            lambda: _Connection(self), self.host, self.port
        )
        self.opened += 1
        return conn

    async def _connect(self, data: bytes, done: Done, deadline: float) -> None:
        try:
            conn = await asyncio.wait_for(self._open(), max(0.001, deadline - self._clock()))
        except Exception as exc:  # refused, timed out: this request fails, others go on
            self._opening -= 1
            done(0, b"", "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__)
            self._drain_waiting()
            return
        self._opening -= 1
        self._busy.add(conn)
        conn.send(data, done, deadline)

    def release(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        if self._waiting:
            data, done, deadline = self._waiting.popleft()
            self._busy.add(conn)
            conn.send(data, done, deadline)
            return
        conn.idle_since = self._clock()
        self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._drain_waiting()

    def _drain_waiting(self) -> None:
        """Requests that waited for a connection, now that one may be opened."""
        while self._waiting and (self._idle or self.open_connections < self.limit):
            data, done, deadline = self._waiting.popleft()
            self.send_until(data, done, deadline)

    def send_until(self, data: bytes, done: Done, deadline: float) -> None:
        if self._idle:
            conn = self._idle.popleft()
            self._busy.add(conn)
            conn.send(data, done, deadline)
        else:
            self._opening += 1
            self._loop.create_task(self._connect(data, done, deadline))

    def _sweep(self) -> None:
        now = self._clock()
        for conn in [c for c in self._busy if c.deadline < now]:
            conn.fail("timeout")
        while self._waiting and self._waiting[0][2] < now:
            _, done, _ = self._waiting.popleft()
            done(0, b"", "timeout")
        while self._idle and self._idle[0].idle_since < now - IDLE_S:
            stale = self._idle.popleft()
            if stale.transport is not None:
                stale.transport.close()
        self._sweeper = self._loop.call_later(SWEEP_S, self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in [*self._idle, *self._busy]:
            conn.fail("closed")
        while self._waiting:
            _, done, _ = self._waiting.popleft()
            done(0, b"", "closed")
