"""One gateway message, from its HTTP request to its answer.

The order is that of what each step costs and of what it may answer:

1. the TIF headers and the timestamp (no IO), the client's secret (a per-worker cache, else
   one read; an unknown paasid is remembered too) and the signature: an unauthenticated
   request is refused with HTTP 401 before anything is recorded; then the client's rate
   (429). All of this before the body is read: a stranger's body is never taken in;
2. the body, up to its bound (413); the envelope: a body that is not JSON or has no
   ``infno`` is refused with HTTP 400;
3. the envelope's fields checked and its input hashed (no IO), then the admission
   (``messages.admit``, one statement): the nonce recorded (a replay 401), the client's
   and the facility's standing (403), and — for a message whose transaction will run —
   its msgid reserved with its body hash before anything runs;
4. from here every answer is an envelope with HTTP 200: the envelope's fields, the answer
   stored for the msgid (sent again unchanged, or MSGID_REUSED for another body), another
   try's reservation (MSGID_REUSED for another body, MSGID_IN_PROGRESS for the same), the
   infno (UNSUPPORTED_INFNO), sign_no (SIGN_NO_INVALID), then the transaction's handler;
5. the handler's answer, success or business refusal, is stored before it is sent — a
   success by the handler's own transaction when its work is one (``Call.answered``: the
   work and its answer commit together), else after it returns; a failure of a
   dependency or an unexpected error is answered (infcode -1) but not stored, and the
   reservation released, so the HIS may send the message again under the same msgid.

The log line of each message names its infno, msgid, infcode and error code, never a
secret, token or identity number.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import msgspec
import structlog

from cardsvc import clock, db
from cardsvc.config import Settings
from cardsvc.db import Pool
from cardsvc.errors import (
    CardsvcError,
    Conflict,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    Unauthenticated,
)
from cardsvc.national import envelope, messages, tif
from cardsvc.national import transactions as _transactions  # noqa: F401 - registers them
from cardsvc.national.clients import ClientKey, GatewayClients
from cardsvc.national.filejobs import FileJobs
from cardsvc.national.registry import TRANSACTIONS, AnswerHook, Call, FileAnswer, Output
from cardsvc.ops import metrics
from cardsvc.web.caller import Caller
from cardsvc.web.ratelimit import TokenBuckets

if TYPE_CHECKING:
    from cardsvc.services import Services

log = structlog.get_logger("cardsvc.national")

T = TypeVar("T")

JSON = "application/json"
FILE = "application/zip"
# A handler's bound: inside the request's own, so that a slow one is answered as an
# envelope (not stored: the HIS sends the message again).
_HANDLER_MARGIN = 0.5


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


class PayloadTooLarge(InvalidRequest):
    status = 413
    default_code = "PAYLOAD_TOO_LARGE"


def refusal(exc: CardsvcError, received: dt.datetime) -> Reply:
    """An answer that is no message's: HTTP 4xx with the envelope error body. Its
    ``inf_refmsgid`` has the contract's form (region ``000000``: the envelope was not read)
    with 10 random digits; nothing is recorded under it."""
    inf_refmsgid = envelope.refmsgid(None, received, secrets.randbelow(10**10))
    body = envelope.encode_answer(
        output=None, error=exc, inf_refmsgid=inf_refmsgid, received=received, answered=clock.now()
    )
    headers = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    return Reply(exc.status, body, headers=headers)


def observe(infno: str, msgid: str, outcome: str, code: str) -> None:
    """The message's metric and its log line."""
    label = infno if infno in TRANSACTIONS else "unsupported" if infno else "none"
    metrics.observe_gateway_message(label, outcome, code)
    log.info(
        "gateway_message",
        infno=infno[:10],
        msgid=msgid,
        infcode=-1 if code else 0,
        outcome=outcome,
        error_code=code,
    )


@dataclass(frozen=True, slots=True)
class _Checked:
    """An envelope's checks, before its admission: its body hash, or its refusal."""

    body_hash: bytes = b""
    refused: CardsvcError | None = None


def _check(env: envelope.Envelope, key: ClientKey) -> _Checked:
    try:
        envelope.check(env, key.fixmedins_code)
        inputs = envelope.normalise(env.input)
        envelope.check_insured_region(env, inputs)
        return _Checked(body_hash=envelope.hash_of(env.infno, inputs))
    except CardsvcError as exc:
        return _Checked(refused=exc)


def _reservation(env: envelope.Envelope | None, checked: _Checked) -> messages.Reservation | None:
    """What a message whose transaction may run reserves its msgid with (nothing for one
    refused before: it changes nothing, and the HIS sends it again)."""
    if env is None or checked.refused is not None:
        return None
    tx = TRANSACTIONS.get(env.infno)
    if tx is None:
        return None
    return messages.Reservation(env.infno, checked.body_hash, tx.needs_sign_no)


def _in_progress() -> ServiceUnavailable:
    return ServiceUnavailable(
        "this message (its msgid) is being processed by an earlier try: send it again in a"
        " moment with the same msgid",
        code="MSGID_IN_PROGRESS",
    )


def _reused() -> Conflict:
    return Conflict(
        "msgid was used before for another message: every message needs its own msgid",
        code="MSGID_REUSED",
    )


class _TwinAnswered(ServiceUnavailable):
    """Raised in the handler's transaction (rolling its work back): a concurrent try of the
    same body (one that took the reservation over after its lease) stored its answer
    first; that one is answered."""

    default_code = "MSGID_IN_PROGRESS"


@dataclass(slots=True)
class _InTransaction:
    """The answer the handler's transaction stored: trusted only once the handler has
    returned (its commit done)."""

    answer: bytes | None = None


@dataclass(frozen=True, slots=True)
class _Message:
    """An admitted message: everything its answer needs."""

    key: ClientKey
    env: envelope.Envelope
    admitted: messages.Admitted
    inf_refmsgid: str
    received: dt.datetime
    checked: _Checked

    def answer(self, output: dict[str, object] | None, error: CardsvcError | None) -> bytes:
        return envelope.encode_answer(
            output=output,
            error=error,
            inf_refmsgid=self.inf_refmsgid,
            received=self.received,
            answered=clock.now(),
        )


class Gateway:
    def __init__(self, pool: Pool, clients: GatewayClients, settings: Settings) -> None:
        self._pool, self._clients, self._settings = pool, clients, settings
        # The admissions and stored answers, group-committed (closed at shutdown).
        # A reservation's lease: past the longest a try runs (its handler's bound).
        self.messages = messages.Messages(pool, lease=2 * settings.request_timeout)
        self._buckets = TokenBuckets(settings.gateway_rate, settings.gateway_burst)
        # The reconciliation files' thread and jobs (9101, 3202), one per facility.
        self.file_jobs = FileJobs()

    async def handle(
        self,
        services: Services,
        headers: Mapping[str, str],
        read_body: Callable[[], Awaitable[bytes]],
    ) -> Reply:
        """The reply to one request; never raises (a fault of cardsvc's own is a logged
        503 with the envelope error body, nothing stored: the HIS sends it again).
        ``read_body`` takes the body in, within its bound (``PayloadTooLarge``); it is
        called only once the request is authenticated."""
        received = clock.now()
        try:
            return await self._handle(services, headers, read_body, received)
        except Exception as exc:
            log.error("gateway_failed", exc_info=exc)
            observe("", "", "unavailable", "INTERNAL")
            fault = ServiceUnavailable(
                "internal error: the message was not processed; send it again with the same"
                " msgid, or report it",
                code="INTERNAL",
            )
            return refusal(fault, received)

    async def _handle(
        self,
        services: Services,
        headers: Mapping[str, str],
        read_body: Callable[[], Awaitable[bytes]],
        received: dt.datetime,
    ) -> Reply:
        infno = msgid = ""
        try:
            key, nonce = await self._authenticate(headers)
            decoded = envelope.decode(await read_body())
            infno = decoded.infno or (decoded.envelope.infno if decoded.envelope else "")
            env = decoded.envelope
            msgid = (env.msgid or "") if env is not None else ""
            checked = _check(env, key) if env is not None else _Checked()
            admitted = await self.messages.admit(
                messages.Admission(
                    paasid=key.paasid,
                    nonce=nonce,
                    sign_no=(env.sign_no or "") if env is not None else "",
                    msgid=msgid,
                    fixmedins_code=key.fixmedins_code,
                    reservation=_reservation(env, checked),
                )
            )
        except CardsvcError as exc:
            observe(infno, msgid, "refused", exc.code)
            return refusal(exc, received)
        except Exception as exc:
            mapped = db.as_service_error(exc)
            if mapped is None:
                raise
            observe(infno, msgid, "unavailable", mapped.code)
            return refusal(mapped, received)
        region = env.mdtrtarea_admvs if env is not None else None
        inf_refmsgid = envelope.refmsgid(region, received, admitted.sequence)
        if env is None:  # an envelope with a malformed field: answered, not stored
            error = decoded.refusal or InvalidRequest("envelope invalid", code="INPUT_INVALID")
            observe(infno, msgid, "refused", error.code)
            bare = envelope.encode_answer(
                output=None,
                error=error,
                inf_refmsgid=inf_refmsgid,
                received=received,
                answered=clock.now(),
            )
            return Reply(200, bare)
        message = _Message(key, env, admitted, inf_refmsgid, received, checked)
        return await self._message(services, message)

    async def _authenticate(self, headers: Mapping[str, str]) -> tuple[ClientKey, str]:
        parsed = tif.parse(headers)
        tif.check_timestamp(parsed.timestamp, time.time(), self._settings.signature_window)
        key = await self._clients.key(parsed.paasid)
        if key is None:
            raise Unauthenticated("no such gateway client", code="GATEWAY_CLIENT_UNKNOWN")
        tif.check_signature(parsed, key.secret)
        # After the signature, so nobody can spend another client's allowance.
        wait = self._buckets.take(key.paasid, time.monotonic())
        if wait:
            raise RateLimited("too many messages from this gateway client", retry_after=wait)
        return key, parsed.nonce

    async def _message(self, services: Services, m: _Message) -> Reply:
        env, admitted = m.env, m.admitted
        msgid = env.msgid or ""
        if m.checked.refused is not None:
            observe(env.infno, msgid, "refused", m.checked.refused.code)
            return Reply(200, m.answer(None, m.checked.refused))
        call = Call(
            services=services,
            pool=self._pool,
            caller=Caller(
                kind="gateway", fixmedins_code=m.key.fixmedins_code, gateway_client=m.key.paasid
            ),
            paasid=m.key.paasid,
            fixmedins_code=m.key.fixmedins_code,
            msgid=msgid,
            infno=env.infno,
            opter=env.opter or "",
            opter_name=env.opter_name or "",
            opter_type=env.opter_type or "",
            mdtrtarea_admvs=env.mdtrtarea_admvs or "",
            insuplc_admdvs=env.insuplc_admdvs or "",
            sign_no=env.sign_no or None,
            now=m.received,
            store_answer=self._answer_in(m, in_transaction := _InTransaction()),
        )
        if admitted.stored is not None:
            return await self._again(m, call, admitted.stored)
        tx = TRANSACTIONS.get(env.infno)
        refused: CardsvcError | None = None
        if admitted.pending is not None:  # another try holds the msgid
            refused = _reused() if admitted.pending != m.checked.body_hash else _in_progress()
        elif tx is None:
            refused = NotFound(f"infno {env.infno} is not supported", code="UNSUPPORTED_INFNO")
        elif tx.needs_sign_no and not admitted.signed_in:
            refused = Unauthenticated(
                "sign_no is missing, unknown, signed out or expired: sign in with 9001",
                code="SIGN_NO_INVALID",
            )
        elif not admitted.reserved:  # not expected: the admission reserves what runs
            refused = _in_progress()
        if refused is not None:
            observe(env.infno, msgid, "refused", refused.code)
            return Reply(200, m.answer(None, refused))
        output, error = await self._run(call, env.input or {})
        if isinstance(error, _TwinAnswered):
            twin = await self._stored(call)
            if twin is not None:
                return await self._again(m, call, twin)
        if error is None and in_transaction.answer is not None:
            observe(call.infno, call.msgid, "ok", "")
            return Reply(200, in_transaction.answer)
        if error is not None and not _stored_refusal(error):
            await self._release(call, admitted.sequence)
            observe(env.infno, msgid, "unavailable", error.code)
            return Reply(200, m.answer(None, error))
        if isinstance(output, FileAnswer):
            return await self._store(m, call, error, output.content, FILE, output.file_qury_no)
        return await self._store(m, call, error, m.answer(output, error), JSON)

    def _answer_in(self, m: _Message, stored: _InTransaction) -> AnswerHook:
        """The hook storing a success answer in the handler's transaction."""

        async def store(conn: db.Connection, output: Output) -> None:
            if isinstance(output, FileAnswer):
                raise RuntimeError("a file answer is stored after its handler returns")
            answer = m.answer(output, None)
            if not await messages.store_in(conn, _new_answer(m, None, answer, JSON)):
                raise _TwinAnswered("the message was answered by another try")
            stored.answer = answer

        return store

    async def _stored(self, call: Call) -> messages.Stored | None:
        try:
            return await messages.stored(self._pool, call.fixmedins_code, call.msgid)
        except Exception as exc:
            if db.as_service_error(exc) is None:
                raise
            return None

    async def _release(self, call: Call, owner: int) -> None:
        """The reservation ended without an answer: the next try runs at once. If even
        this fails, the reservation's lease ends it."""
        try:
            await self.messages.release(call.fixmedins_code, call.msgid, owner)
        except Exception as exc:
            if db.as_service_error(exc) is None:
                raise
            log.warning("gateway_release_failed", infno=call.infno, msgid=call.msgid)

    async def _run(
        self, call: Call, inputs: dict[str, msgspec.Raw]
    ) -> tuple[Output | None, CardsvcError | None]:
        handler = TRANSACTIONS[call.infno].handler
        return await self._bounded(call, handler(call, inputs))

    async def _bounded(
        self, call: Call, work: Awaitable[T]
    ) -> tuple[T | None, CardsvcError | None]:
        """``work``'s result or refusal, within the message's bound; a failure of a
        dependency, a timeout or a fault of cardsvc's own as a retryable refusal."""
        bound = max(0.1, self._settings.request_timeout - _HANDLER_MARGIN)
        try:
            async with asyncio.timeout(bound):
                return await work, None
        except CardsvcError as exc:
            return None, exc
        except TimeoutError:
            log.warning("gateway_handler_timeout", infno=call.infno, msgid=call.msgid)
            return None, ServiceUnavailable(
                "the message took too long: send it again with the same msgid",
                code="REQUEST_TIMEOUT",
            )
        except Exception as exc:
            mapped = db.as_service_error(exc) or db.as_input_error(exc)
            if mapped is not None:
                return None, mapped
            log.error("gateway_handler_failed", infno=call.infno, msgid=call.msgid, exc_info=exc)
            return None, ServiceUnavailable(
                "internal error: the message was not processed; send it again with the same"
                " msgid, or report it",
                code="INTERNAL",
            )

    async def _store(
        self,
        m: _Message,
        call: Call,
        error: CardsvcError | None,
        answer: bytes,
        content_type: str,
        file_qury_no: str | None = None,
    ) -> Reply:
        """Stores the answer (a file's number instead of its bytes) and sends it."""
        new = _new_answer(m, error, answer, content_type, file_qury_no)
        try:
            ours, stored = await self.messages.store(new)
        except Exception as exc:
            mapped = exc if isinstance(exc, ServiceUnavailable) else db.as_service_error(exc)
            if mapped is None:
                raise
            # Done but not stored: a retry runs the (idempotent) handler again.
            await self._release(call, m.admitted.sequence)
            observe(call.infno, call.msgid, "unavailable", mapped.code)
            return Reply(200, m.answer(None, mapped))
        if not ours:
            return await self._again(m, call, stored)
        observe(call.infno, call.msgid, "refused" if error else "ok", error.code if error else "")
        return Reply(200, answer, content_type)

    async def _again(self, m: _Message, call: Call, stored: messages.Stored) -> Reply:
        """The msgid was answered before: that answer, unchanged, for the same body (a file
        read again, while it is kept)."""
        msgid = m.env.msgid or ""
        if stored.body_hash != m.checked.body_hash:
            exc = _reused()
            observe(m.env.infno, msgid, "refused", exc.code)
            return Reply(200, m.answer(None, exc))
        if stored.answer is None:
            return await self._file_again(m, call, stored)
        observe(m.env.infno, msgid, "replayed", "")
        return Reply(200, stored.answer, stored.content_type)

    async def _file_again(self, m: _Message, call: Call, stored: messages.Stored) -> Reply:
        tx = TRANSACTIONS.get(call.infno)
        if tx is None or tx.replay_file is None or stored.file_qury_no is None:
            raise RuntimeError(f"infno {call.infno} stored a file answer it cannot read again")
        content, error = await self._bounded(call, tx.replay_file(call, stored.file_qury_no))
        if error is not None or content is None:
            refused = error or _in_progress()
            outcome = "refused" if _stored_refusal(refused) else "unavailable"
            observe(call.infno, call.msgid, outcome, refused.code)
            return Reply(200, m.answer(None, refused))
        observe(call.infno, call.msgid, "replayed", "")
        return Reply(200, content, stored.content_type)


def _new_answer(
    m: _Message,
    error: CardsvcError | None,
    answer: bytes,
    content_type: str,
    file_qury_no: str | None = None,
) -> messages.NewAnswer:
    return messages.NewAnswer(
        fixmedins_code=m.key.fixmedins_code,
        msgid=m.env.msgid or "",
        infno=m.env.infno,
        body_hash=m.checked.body_hash,
        paasid=m.key.paasid,
        inf_refmsgid=m.inf_refmsgid,
        infcode=-1 if error is not None else 0,
        content_type=content_type,
        answer=None if file_qury_no is not None else answer,
        file_qury_no=file_qury_no,
    )


def _stored_refusal(error: CardsvcError) -> bool:
    """A refusal the same message would meet again (stored); not a dependency's failure,
    a timeout or an overload, which a retry may get past."""
    return not isinstance(error, ServiceUnavailable | RateLimited) and error.status < 500
