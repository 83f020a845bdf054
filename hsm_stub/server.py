"""hsm_stub's asyncio TCP server: frames in, ``commands.execute``, frames out.

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
from contextlib import suppress

import structlog

from hsm_stub.commands import Reply, execute, failure_reply
from hsm_stub.keystore import Keystore
from hsm_stub.protocol import (
    UNREADABLE_COMMAND,
    FrameDecoder,
    FramingError,
    MalformedFrame,
    Status,
    encode_response,
    parse_request,
)

_READ_SIZE = 64 * 1024


class HsmServer:
    """Serves one keystore over TCP until ``stop``."""

    def __init__(self, keystore: Keystore) -> None:
        self._keystore = keystore
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
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
            writer.close()
        await self._server.wait_closed()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._connections.add(writer)
        log = self._log.bind(peer=_peer_label(writer))
        log.info("hsm.connection_opened")
        try:
            await self._answer_frames(reader, writer, log)
        except FramingError as exc:
            log.warning("hsm.framing_lost", error=str(exc))
        except ConnectionError as exc:
            log.info("hsm.connection_error", error=type(exc).__name__)
        finally:
            self._connections.discard(writer)
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()
            log.info("hsm.connection_closed")

    async def _answer_frames(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        decoder = FrameDecoder.for_requests()
        while chunk := await reader.read(_READ_SIZE):
            decoder.feed(chunk)
            for body in decoder.frames():
                writer.write(self._answer(body, log))
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
        return reply


def _peer_label(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
