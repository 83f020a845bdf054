"""hsm_stub's asyncio server: mutual TLS, then frames in, ``commands.execute``, frames out.

Only its host talks to an HSM. Every connection must complete a TLS 1.3 handshake with a
client certificate issued by the link's CA (``credentials.server_context``) before a single
frame is read; there is no plain-TCP mode. Resources are bounded (``Limits``), and a socket
that has not authenticated can never take the place of one that has:

- handshakes in progress have a budget of their own: at most ``max_handshakes_per_address``
  from one source address (one more is closed at once) and ``max_handshakes`` in all. When
  all are taken, a newcomer from an address with fewer handshakes in progress than the
  busiest address displaces that address's oldest (which is closed); otherwise it is
  closed. So squatters that never finish a handshake hold at most their addresses' share,
  and a host from another address still gets through;
- a handshake must finish within ``handshake_timeout``;
- at most ``max_connections`` authenticated connections (a verified client certificate)
  at once; one more is closed right after its handshake;
- a connection that sends nothing (or reads no answer) for ``idle_timeout`` is closed.

Each key-management command (TK, PB) is logged as one ``hsm.key_management`` line with the
peer certificate's subject and the command's facts (kind, region, check values), never a key
or a blob.

Each request is executed as soon as its frame is complete and answered with its header echoed.
Commands take microseconds and run inline, so today responses leave in arrival order; the
protocol promises only the header, and cardsvc's client relies on nothing else.

Failure handling: a delimited frame with unreadable content gets status ``15``; a length prefix
that cannot be right means the stream is lost, so that connection is closed; a bug in a handler
gets status ``68`` and a log line. None of these stops the server. Logs never carry keys,
cryptograms or payloads.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from contextlib import suppress
from dataclasses import dataclass

import structlog

from hsm_stub.commands import Reply, execute, failure_reply
from hsm_stub.keystore import Keystore
from hsmlink.credentials import peer_subject
from hsmlink.protocol import (
    UNREADABLE_COMMAND,
    FrameDecoder,
    FramingError,
    MalformedFrame,
    Status,
    encode_response,
    parse_request,
)

_READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    # Authenticated connections: every cardsvc worker's CARDSVC_HSM_CONNECTIONS (4 by
    # default; 16 workers are 64), its commands' own, and a load test harness beside them.
    max_connections: int = 128
    # Handshakes in progress, apart from the above: in all, and from one source address
    # (a host's workers connecting at once after a restart).
    max_handshakes: int = 64
    max_handshakes_per_address: int = 16
    handshake_timeout: float = 5.0
    # Above cardsvc's own idle bound (cardsvc.hsm.client.MAX_IDLE), so the host, not the
    # HSM, is the one that ends an idle connection and no request races the close.
    idle_timeout: float = 300.0

    def __post_init__(self) -> None:
        counts = (self.max_connections, self.max_handshakes, self.max_handshakes_per_address)
        if min(counts) < 1 or self.handshake_timeout <= 0 or self.idle_timeout <= 0:
            raise ValueError("limits must be positive")


class HsmServer:
    """Serves one keystore over mutual TLS until ``stop``."""

    def __init__(self, keystore: Keystore, tls: ssl.SSLContext, limits: Limits) -> None:
        self._keystore = keystore
        self._tls = tls
        self._limits = limits
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()  # every one, for ``stop``
        self._authenticated: set[asyncio.StreamWriter] = set()
        # Handshakes in progress, oldest first, with their source address.
        self._handshaking: collections.OrderedDict[asyncio.StreamWriter, str] = (
            collections.OrderedDict()
        )
        self._handshakes_from: collections.Counter[str] = collections.Counter()
        self._log: structlog.typing.FilteringBoundLogger = structlog.get_logger("hsm_stub")

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the bound address (the real port when ``port`` is 0)."""
        self._server = await asyncio.start_server(self._serve_connection, host, port)
        bound_host, bound_port = self._server.sockets[0].getsockname()[:2]
        return str(bound_host), int(bound_port)

    async def stop(self) -> None:
        """Stop listening and close every connection (clients see EOF, not a hang)."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._connections):
            # Abort, not a TLS close: a close waits for the peer's close_notify.
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        log = self._log.bind(peer=_peer_label(writer))
        if not self._begin_handshake(writer, log):
            writer.transport.abort()
            return
        self._connections.add(writer)
        try:
            try:
                shaken = await self._handshake(writer, log)
            finally:
                self._end_handshake(writer)
            if not shaken:
                return
            if len(self._authenticated) >= self._limits.max_connections:
                log.warning("hsm.connection_refused", reason="too many connections")
                return
            self._authenticated.add(writer)
            log = log.bind(peer_subject=peer_subject(writer.get_extra_info("peercert")))
            log.info("hsm.connection_opened")
            await self._answer_frames(reader, writer, log)
        except FramingError as exc:
            log.warning("hsm.framing_lost", error=str(exc))
        except TimeoutError:
            log.info("hsm.idle_timeout", seconds=self._limits.idle_timeout)
        except OSError as exc:  # a reset, or a TLS error after the handshake
            log.info("hsm.connection_error", error=type(exc).__name__)
        finally:
            self._authenticated.discard(writer)
            self._connections.discard(writer)
            writer.close()
            # A TLS close waits for the peer's close_notify; a silent peer gets a bound.
            # OSError: after a failed handshake, wait_closed raises that handshake's error.
            with suppress(OSError, TimeoutError):
                async with asyncio.timeout(self._limits.handshake_timeout):
                    await writer.wait_closed()
            writer.transport.abort()
            log.info("hsm.connection_closed")

    def _begin_handshake(
        self, writer: asyncio.StreamWriter, log: structlog.typing.FilteringBoundLogger
    ) -> bool:
        """Count a new connection's handshake in its budget, or refuse it (False)."""
        address = _peer_address(writer)
        mine = self._handshakes_from[address]
        if mine >= self._limits.max_handshakes_per_address:
            log.warning("hsm.connection_refused", reason="too many handshakes from this address")
            return False
        if len(self._handshaking) >= self._limits.max_handshakes:
            busiest, most = self._handshakes_from.most_common(1)[0]
            if mine >= most:
                log.warning("hsm.connection_refused", reason="too many handshakes in progress")
                return False
            oldest = next(w for w, a in self._handshaking.items() if a == busiest)
            self._end_handshake(oldest)
            oldest.transport.abort()
            log.warning("hsm.handshake_displaced", displaced=_peer_label(oldest))
        self._handshaking[writer] = address
        self._handshakes_from[address] += 1
        return True

    def _end_handshake(self, writer: asyncio.StreamWriter) -> None:
        address = self._handshaking.pop(writer, None)
        if address is not None:
            self._handshakes_from[address] -= 1
            if not self._handshakes_from[address]:
                del self._handshakes_from[address]

    async def _handshake(
        self, writer: asyncio.StreamWriter, log: structlog.typing.FilteringBoundLogger
    ) -> bool:
        """TLS with a verified client certificate, within the handshake bound."""
        try:
            async with asyncio.timeout(self._limits.handshake_timeout):
                await writer.start_tls(
                    self._tls, ssl_handshake_timeout=self._limits.handshake_timeout
                )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.warning("hsm.handshake_failed", error=_tls_error(exc))
            writer.transport.abort()
            return False
        return True

    async def _answer_frames(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        decoder = FrameDecoder.for_requests()
        idle = self._limits.idle_timeout
        while True:
            async with asyncio.timeout(idle):
                chunk = await reader.read(_READ_SIZE)
            if not chunk:
                return
            decoder.feed(chunk)
            for body in decoder.frames():
                writer.write(self._answer(body, log))
            async with asyncio.timeout(idle):  # a peer that reads no answers is idle too
                await writer.drain()

    def _answer(self, body: bytes, log: structlog.typing.FilteringBoundLogger) -> bytes:
        try:
            request = parse_request(body)
        except MalformedFrame as exc:
            log.info("hsm.malformed_frame", error=str(exc))
            reply = failure_reply(Status.MALFORMED_REQUEST, "unreadable command code")
            return encode_response(exc.header, UNREADABLE_COMMAND, reply.status, reply.payload)
        reply = self._execute(request.command, request.payload, log)
        return encode_response(request.header, request.command, reply.status, reply.payload)

    def _execute(
        self, command: str, payload: bytes, log: structlog.typing.FilteringBoundLogger
    ) -> Reply:
        try:
            reply = execute(self._keystore, command, payload)
        except Exception:
            log.exception("hsm.internal_error", command=command)
            return failure_reply(Status.INTERNAL, "internal error")
        if reply.status is not Status.OK:
            log.info("hsm.refused", command=command, status=reply.status, reason=reply.reason)
        if reply.facts is not None:
            log.info("hsm.key_management", command=command, status=reply.status, **reply.facts)
        return reply


def _tls_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "handshake timed out"
    reason = getattr(exc, "reason", None) or getattr(exc, "verify_message", None)
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


def _peer_address(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def _peer_label(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
