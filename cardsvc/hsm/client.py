"""The HSM client: a small pool of persistent mutual-TLS connections to hsm_stub.

Layers, one job each::

    HsmClient    typed commands, statuses → results or errors, the per-call timeout, picking
    └── _Slot    one pool position: connects lazily, backs off while the HSM is unreachable
        └── _Link  one live connection: many requests in flight, matched to answers by header

Every call is bounded by ``timeout`` (connecting included) and fails with ``HsmUnavailable``
when the HSM is down, unreachable or silent, never hangs. A lost connection fails its in-flight
requests at once; the next call on that slot reconnects. After a failed connect a slot refuses
calls for a short, growing backoff so a dead HSM is not hammered. A call that times out also
drops its connection: HSM commands take microseconds, so silence means a dead or half-open
connection, not a slow answer.

The link is mutual TLS 1.3 only (``hsmlink.credentials.client_context``): the client presents
cardsvc's certificate and accepts only an HSM whose certificate the link's CA issued for the
address dialled; there is no plain-TCP mode. A connection idle for ``MAX_IDLE`` seconds is
replaced before its next use, so the HSM's own (longer) idle timeout never closes a
connection a request is about to use.

Logs and exception messages carry commands, statuses and addresses, never keys or cryptograms.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

import structlog

from cardcrypto.profile import KEY_REF_AUTH, KEY_REF_TXN
from cardsvc.hsm.errors import (
    HsmError,
    HsmKeyUsageRefused,
    HsmRegionNotProvisioned,
    HsmRejected,
    HsmUnavailable,
)
from cardsvc.ops import metrics
from hsmlink.protocol import (
    HEADER_LEN,
    AuditAnchorMacRequest,
    AuditAnchorMacResponse,
    BuildPersonalizationRequest,
    BuildPersonalizationResponse,
    Command,
    EchoRequest,
    EchoResponse,
    ErrorDetail,
    FrameDecoder,
    GenerateTerminalKeyRequest,
    GenerateTerminalKeyResponse,
    KeyCheckValueRequest,
    KeyCheckValueResponse,
    MalformedFrame,
    MalformedPayload,
    Payload,
    PinUnblockRequest,
    PinUnblockResponse,
    ProtocolError,
    ResponseFrame,
    Status,
    TerminalKind,
    VerifyAuditAnchorRequest,
    VerifyAuditAnchorResponse,
    VerifyCardRequest,
    VerifyCardResponse,
    VerifyTerminalRequest,
    VerifyTerminalResponse,
    decode_payload,
    encode_payload,
    encode_request,
    parse_response,
)

_READ_SIZE = 64 * 1024
_MIN_BACKOFF = 0.05
_MAX_BACKOFF = 1.0
MAX_IDLE = 60.0  # seconds; below hsm_stub's idle timeout (hsm_stub.server.Limits)
_PING = encode_payload(EchoRequest(data=b""))

_log: structlog.typing.FilteringBoundLogger = structlog.get_logger("cardsvc.hsm")

R = TypeVar("R", bound=Payload)


@dataclass(frozen=True, slots=True)
class GeneratedTerminalKey:
    clear_key: bytes = field(repr=False)  # shown once to the administrator, never stored
    key_under_lmk: bytes
    kcv: str


@dataclass(frozen=True, slots=True)
class TerminalSignInResult:
    server_cryptogram: bytes
    session_key: bytes = field(repr=False)


class _Link:
    """One open connection; a reader task resolves each request's future by its header."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_closed: Callable[[_Link], None],
    ) -> None:
        self._writer = writer
        self._on_closed = on_closed
        self._pending: dict[bytes, asyncio.Future[ResponseFrame]] = {}
        self._ids = itertools.count()
        self._open = True
        self.last_used = asyncio.get_running_loop().time()
        self._reader_task = asyncio.create_task(self._read_responses(reader))

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def request(self, command: Command, payload: bytes) -> ResponseFrame:
        if not self._open:
            raise HsmUnavailable("HSM connection lost")
        self.last_used = asyncio.get_running_loop().time()
        header = (next(self._ids) % 2 ** (8 * HEADER_LEN)).to_bytes(HEADER_LEN, "big")
        future: asyncio.Future[ResponseFrame] = asyncio.get_running_loop().create_future()
        self._pending[header] = future
        try:
            await self._send(encode_request(header, command, payload))
            # Resolved by the reader task, or failed by close() if the connection is lost.
            return await future
        finally:
            self._pending.pop(header, None)

    async def _send(self, frame: bytes) -> None:
        # Some event loops (uvloop) raise on writing to a transport that is already closed.
        if self._writer.is_closing():
            self.close("connection lost before sending")
            return
        self._writer.write(frame)
        try:
            await self._writer.drain()
        except ConnectionError:
            self.close("connection error while sending")

    def close(self, reason: str, *, expected: bool = False) -> None:
        """Close now and fail every request in flight; idempotent."""
        if not self._open:
            return
        self._open = False
        self._writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(HsmUnavailable("HSM connection lost"))
        self._pending.clear()
        log = _log.info if expected else _log.warning
        log("hsm.connection_closed", reason=reason)
        self._on_closed(self)

    async def wait_closed(self) -> None:
        self._reader_task.cancel()
        with suppress(asyncio.CancelledError):
            await self._reader_task
        with suppress(ConnectionError):
            await self._writer.wait_closed()

    async def _read_responses(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder.for_responses()
        reason = "HSM closed the connection"
        try:
            while chunk := await reader.read(_READ_SIZE):
                decoder.feed(chunk)
                for body in decoder.frames():
                    self._resolve(body)
        except (OSError, ProtocolError) as exc:
            reason = f"read failed: {type(exc).__name__}"
        finally:
            self.close(reason)

    def _resolve(self, body: bytes) -> None:
        try:
            frame = parse_response(body)
        except MalformedFrame as exc:
            self._settle(exc.header, HsmError("unreadable HSM response"))
            return
        self._settle(frame.header, frame)

    def _settle(self, header: bytes, outcome: ResponseFrame | Exception) -> None:
        future = self._pending.get(header)
        if future is None or future.done():
            return  # its caller already gave up (timeout or cancellation)
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class _Slot:
    """One position in the pool: the current link, connected on demand, with backoff."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._link: _Link | None = None
        self._connect_lock = asyncio.Lock()
        self._retry_at = 0.0
        self._backoff = _MIN_BACKOFF
        self._closed = False

    @property
    def in_flight(self) -> int:
        return self._link.in_flight if self._link is not None else 0

    @property
    def backing_off(self) -> bool:
        """Not connected and not to be dialled again yet: a call here would fail at once."""
        return self._link is None and asyncio.get_running_loop().time() < self._retry_at

    async def request(self, command: Command, payload: bytes) -> ResponseFrame:
        link = await self._connected()
        return await link.request(command, payload)

    def reset(self, reason: str) -> None:
        if self._link is not None:
            self._link.close(reason)

    async def close(self) -> None:
        self._closed = True
        link = self._link
        if link is not None:
            link.close("client closed", expected=True)
            await link.wait_closed()

    async def _connected(self) -> _Link:
        link = self._link
        if link is not None and link.in_flight == 0:
            if asyncio.get_running_loop().time() - link.last_used > MAX_IDLE:
                link.close("idle", expected=True)  # _forget clears self._link
        if self._link is not None:
            return self._link
        async with self._connect_lock:
            if self._link is not None:
                return self._link
            if self._closed:
                raise HsmUnavailable("HSM client is closed")
            if asyncio.get_running_loop().time() < self._retry_at:
                raise HsmUnavailable("HSM unreachable (waiting before reconnecting)")
            self._link = await self._connect()
            return self._link

    async def _connect(self) -> _Link:
        connected = False
        try:
            reader, writer = await asyncio.open_connection(
                self._host, self._port, ssl=self._tls, server_hostname=self._host
            )
            connected = True
        except ssl.SSLCertVerificationError as exc:
            # Not our HSM (or not its certificate): never talk to it.
            _log.error("hsm.untrusted", address=self._address, error=exc.verify_message or str(exc))
            raise HsmUnavailable("HSM identity could not be verified") from None
        except OSError as exc:  # ssl.SSLError included
            _log.warning("hsm.connect_failed", address=self._address, error=type(exc).__name__)
            raise HsmUnavailable("HSM unreachable") from None
        finally:
            # Also when cancelled by the caller's timeout (a black-holed address).
            if not connected:
                self._schedule_retry()
        self._backoff = _MIN_BACKOFF
        _log.info("hsm.connected", address=self._address)
        return _Link(reader, writer, self._forget)

    def _schedule_retry(self) -> None:
        self._retry_at = asyncio.get_running_loop().time() + self._backoff
        self._backoff = min(2 * self._backoff, _MAX_BACKOFF)

    def _forget(self, link: _Link) -> None:
        if self._link is link:
            self._link = None

    @property
    def _address(self) -> str:
        return f"{self._host}:{self._port}"


class HsmClient:
    """Typed hsm_stub commands over ``connections`` multiplexed mutual-TLS connections."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext,
        connections: int = 4,
        timeout: float = 2.0,
    ) -> None:
        if connections < 1 or timeout <= 0:
            raise ValueError("connections must be >= 1 and timeout > 0")
        if not isinstance(tls, ssl.SSLContext) or tls.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("the HSM link needs a TLS context that verifies the HSM")
        self._slots = [_Slot(host, port, tls) for _ in range(connections)]
        self._timeout = timeout
        self._next_slot = 0

    async def start(self) -> None:
        """Open the connections now if the HSM is up; never fails (they connect on demand)."""
        with suppress(TimeoutError):
            async with asyncio.timeout(self._timeout):
                await asyncio.gather(
                    *(slot.request(Command.ECHO, _PING) for slot in self._slots),
                    return_exceptions=True,  # an HSM that is down is logged by the slots
                )

    async def close(self) -> None:
        await asyncio.gather(*(slot.close() for slot in self._slots))

    async def __aenter__(self) -> HsmClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def echo(self, data: bytes) -> bytes:
        response = await self._call(Command.ECHO, EchoRequest(data=data), EchoResponse)
        return response.data

    async def generate_terminal_key(self, kind: TerminalKind) -> GeneratedTerminalKey:
        """A new terminal key, bound by the HSM to ``kind`` (what it may be used for)."""
        response = await self._call(
            Command.GENERATE_TERMINAL_KEY,
            GenerateTerminalKeyRequest(kind=kind),
            GenerateTerminalKeyResponse,
        )
        return GeneratedTerminalKey(response.clear_key, response.key_under_lmk, response.kcv)

    async def verify_terminal_cryptogram(
        self, key_under_lmk: bytes, rs: bytes, rt: bytes, cryptogram: bytes
    ) -> TerminalSignInResult:
        """Check a terminal's sign-in cryptogram; ``HsmRejected`` if it does not verify."""
        request = VerifyTerminalRequest(
            key_under_lmk=key_under_lmk, rs=rs, rt=rt, cryptogram=cryptogram
        )
        response = await self._call(Command.VERIFY_TERMINAL, request, VerifyTerminalResponse)
        return TerminalSignInResult(response.server_cryptogram, response.session_key)

    async def build_personalization_blob(
        self, admdvs: str, card_sn: str, counter_key_under_lmk: bytes
    ) -> str:
        """The sealed ``K_auth ‖ K_txn`` for a card, under the counter terminal's key.

        ``HsmRegionNotProvisioned`` if the HSM has no issuer keys for ``admdvs``;
        ``HsmKeyUsageRefused`` if the key is not bound to a counter (e.g. a blob made before
        key kinds were bound: the counter must be re-keyed)."""
        request = BuildPersonalizationRequest(
            admdvs=admdvs, card_sn=card_sn, counter_key_under_lmk=counter_key_under_lmk
        )
        response = await self._call(
            Command.BUILD_PERSONALIZATION, request, BuildPersonalizationResponse
        )
        return response.blob

    async def verify_card_cryptogram(
        self, admdvs: str, card_sn: str, key_ref: int, challenge: bytes, cryptogram: bytes
    ) -> bool:
        """True if the card's INTERNAL AUTHENTICATE answer verifies (False on status 01)."""
        if key_ref not in (KEY_REF_AUTH, KEY_REF_TXN):
            raise ValueError("key_ref must be KEY_REF_AUTH (1) or KEY_REF_TXN (2)")
        request = VerifyCardRequest(
            admdvs=admdvs,
            card_sn=card_sn,
            key_ref=key_ref,
            challenge=challenge,
            cryptogram=cryptogram,
        )
        try:
            await self._call(Command.VERIFY_CARD, request, VerifyCardResponse)
        except HsmRejected:
            return False
        return True

    async def pin_unblock_mac(
        self, admdvs: str, card_sn: str, counter_key_under_lmk: bytes, card_challenge: bytes
    ) -> bytes:
        """RESET RETRY COUNTER's MAC for this card and its 8-byte challenge, computed under
        the card's K_unblock inside the HSM. ``HsmKeyUsageRefused`` if the key is not a
        counter's; ``HsmRegionNotProvisioned`` for a region without issuer keys."""
        request = PinUnblockRequest(
            admdvs=admdvs,
            card_sn=card_sn,
            counter_key_under_lmk=counter_key_under_lmk,
            card_challenge=card_challenge,
        )
        response = await self._call(Command.PIN_UNBLOCK, request, PinUnblockResponse)
        return response.mac

    async def key_check_value(self, key_under_lmk: bytes) -> str:
        request = KeyCheckValueRequest(key_under_lmk=key_under_lmk)
        response = await self._call(Command.KEY_CHECK_VALUE, request, KeyCheckValueResponse)
        return response.kcv

    async def audit_anchor_mac(self, message: bytes) -> bytes:
        """The HSM's MAC of an audit anchor under its audit anchor key."""
        request = AuditAnchorMacRequest(message=message)
        response = await self._call(Command.AUDIT_ANCHOR_MAC, request, AuditAnchorMacResponse)
        return response.mac

    async def verify_audit_anchor(self, message: bytes, mac: bytes) -> bool:
        """True if ``mac`` is the HSM's MAC of ``message`` (False on status 01)."""
        request = VerifyAuditAnchorRequest(message=message, mac=mac)
        try:
            await self._call(Command.VERIFY_AUDIT_ANCHOR, request, VerifyAuditAnchorResponse)
        except HsmRejected:
            return False
        return True

    async def _call(self, command: Command, request: Payload, response_type: type[R]) -> R:
        started = time.perf_counter()
        try:
            frame = await self._exchange(command, encode_payload(request))
        except (HsmUnavailable, HsmError):  # no answer, no connection, a broken link
            metrics.observe_hsm_call(command.name, "unavailable", None)
            raise
        # result: the HSM's status by name (ok, verification_failed, key_error, ...)
        seconds = time.perf_counter() - started
        metrics.observe_hsm_call(command.name, frame.status.name.lower(), seconds)
        if frame.command != command:
            raise HsmError("HSM answered another command")
        if frame.status is Status.OK:
            return _decode(frame.payload, response_type)
        if frame.status is Status.VERIFICATION_FAILED:
            raise HsmRejected(frame.status)
        _log_refusal(command, frame)
        if frame.status is Status.UNKNOWN_REGION:
            raise HsmRegionNotProvisioned(
                "the HSM holds no card keys for this person's region; an HSM administrator"
                " must provision it first",
                details={"hsm_status": frame.status.value},
            )
        if frame.status is Status.KEY_USAGE:
            raise HsmKeyUsageRefused(
                "the HSM refused this terminal's key for card keys or a PIN unblock: it is not"
                " bound to a counter terminal; register a new counter terminal (re-key) and"
                " use that",
                details={"hsm_status": frame.status.value},
            )
        raise HsmError(
            f"HSM refused {command.name} (status {frame.status.value})",
            details={"hsm_status": frame.status.value},
        )

    async def _exchange(self, command: Command, payload: bytes) -> ResponseFrame:
        slot = self._pick_slot()
        try:
            async with asyncio.timeout(self._timeout):
                return await slot.request(command, payload)
        except TimeoutError:
            slot.reset("request timed out")
            raise HsmUnavailable(f"HSM did not answer within {self._timeout:g} s") from None

    def _pick_slot(self) -> _Slot:
        """Least busy slot; ties go round-robin so idle connections all stay warm. A slot
        backing off after a failure comes last: once the HSM is back, calls go to the
        connections already open again instead of failing on one still waiting to retry."""
        count = len(self._slots)
        index = min(
            range(count),
            key=lambda i: (
                self._slots[i].backing_off,
                self._slots[i].in_flight,
                (i - self._next_slot) % count,
            ),
        )
        self._next_slot = (index + 1) % count
        return self._slots[index]


def _decode(payload: bytes, response_type: type[R]) -> R:
    try:
        return decode_payload(payload, response_type)
    except MalformedPayload:
        raise HsmError("unreadable HSM response") from None


def _log_refusal(command: Command, frame: ResponseFrame) -> None:
    try:
        reason = decode_payload(frame.payload, ErrorDetail).reason
    except MalformedPayload:
        reason = "(unreadable)"
    _log.warning("hsm.refused", command=command.name, status=frame.status.value, reason=reason)
