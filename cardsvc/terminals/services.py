"""Terminal registration, sign-in (mutual authentication) and request authentication.

Sign-in: the service gives a challenge Rs; the terminal answers with Rt and
CMAC(K_term, Rs‖Rt); hsm_stub checks it and returns the service cryptogram and the
session key, which the service keeps encrypted under its data key (never in clear at rest)
and caches in memory for signature checks.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping

import msgspec
import structlog

from cardsvc.audit.services import AuditLog
from cardsvc.config import Settings
from cardsvc.db import Pool, transaction
from cardsvc.errors import (
    CardsvcError,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unauthenticated,
)
from cardsvc.hsm.client import HsmClient
from cardsvc.hsm.errors import HsmRejected
from cardsvc.privacy import DataProtector
from cardsvc.terminals import signing
from cardsvc.terminals.admission import (
    DatabaseCrashed,
    admission_batcher,
    check_session_open,
    check_terminal,
    fence_after_crash,
    session_invalid,
)
from cardsvc.terminals.models import (
    RegisterTerminal,
    SessionOpened,
    SignInChallenge,
    SignInComplete,
    TerminalInfo,
    TerminalRegistered,
    UpdateTerminal,
)
from cardsvc.web.caller import Admission, Caller
from cardsvc.web.ratelimit import TokenBuckets
from hsmlink.protocol import TerminalKind as HsmTerminalKind

log = structlog.get_logger(__name__)

# Refusals after which a session's cached key is of no more use.
_SESSION_GONE = frozenset({"SESSION_ENDED", "SESSION_INVALID", "TERMINAL_DISABLED"})
# Live sign-in challenges a terminal keeps: several sign-ins at once (a restart of a
# multi-process terminal) each find theirs, and the table stays bounded.
_LIVE_CHALLENGES = 16


class Session(msgspec.Struct, frozen=True):
    session_id: str
    terminal_id: str
    kind: str
    fixmedins_code: str | None  # a terminal never moves to another facility
    key: bytes
    expires_at: float  # unix seconds


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _challenge_invalid() -> Unauthenticated:
    return Unauthenticated(
        "challenge unknown, used or expired, or terminal not active", code="CHALLENGE_INVALID"
    )


class TerminalRegistry:
    def __init__(self, pool: Pool, hsm: HsmClient, audit: AuditLog) -> None:
        self._pool, self._hsm, self._audit = pool, hsm, audit

    async def register(self, caller: Caller, req: RegisterTerminal) -> TerminalRegistered:
        needs_facility = req.kind in ("pos", "his")
        if needs_facility != (req.fixmedins_code is not None):
            raise InvalidRequest(
                "pos and his terminals belong to a facility; counter and kiosk terminals do not",
                code="FACILITY_REQUIRED" if needs_facility else "FACILITY_NOT_ALLOWED",
            )
        if req.fixmedins_code is not None and not await self._pool.fetchval(
            "SELECT 1 FROM facilities WHERE fixmedins_code = $1", req.fixmedins_code
        ):
            raise NotFound("no such facility", code="FACILITY_NOT_FOUND")
        # The HSM binds the kind into the key's blob: only a counter's key can receive cards.
        key = await self._hsm.generate_terminal_key(HsmTerminalKind(req.kind))
        async with transaction(self._pool) as conn:
            seq = await conn.fetchval("SELECT nextval('terminal_no_seq')")
            terminal_id = f"T{seq:08d}"
            await conn.execute(
                "INSERT INTO terminals (terminal_id, kind, fixmedins_code, key_under_lmk, kcv)"
                " VALUES ($1, $2, $3, $4, $5)",
                terminal_id,
                req.kind,
                req.fixmedins_code,
                key.key_under_lmk,
                key.kcv,
            )
            await self._audit.record(
                conn,
                caller,
                action="terminal.registered",
                object_type="terminal",
                object_id=terminal_id,
                data={"kind": req.kind, "fixmedins_code": req.fixmedins_code, "kcv": key.kcv},
            )
        return TerminalRegistered(
            terminal_id=terminal_id,
            kind=req.kind,
            fixmedins_code=req.fixmedins_code,
            terminal_key=key.clear_key.hex(),
            kcv=key.kcv,
        )

    async def set_status(
        self, caller: Caller, terminal_id: str, req: UpdateTerminal
    ) -> TerminalInfo:
        """Disabling also ends the terminal's open sessions, in the same transaction:
        re-enabling it does not revive them (it signs in again)."""
        async with transaction(self._pool) as conn:
            row = await conn.fetchrow(
                "UPDATE terminals SET status = $2 WHERE terminal_id = $1"
                " RETURNING terminal_id, kind, fixmedins_code, kcv, status",
                terminal_id,
                req.status,
            )
            if row is None:
                raise NotFound("no such terminal", code="TERMINAL_NOT_FOUND")
            data = None
            if req.status == "disabled":
                # A statement of its own, after the row lock: its snapshot then holds any
                # session a sign-in committed while we waited (see ``SignIn.complete``).
                ended = await conn.execute(
                    "UPDATE terminal_sessions SET ended_at = now(),"
                    " ended_reason = 'terminal_disabled'"
                    " WHERE terminal_id = $1 AND ended_at IS NULL",
                    terminal_id,
                )
                data = {"sessions_ended": int(ended.split()[-1])}
            await self._audit.record(
                conn,
                caller,
                action=f"terminal.{req.status}",
                object_type="terminal",
                object_id=terminal_id,
                data=data,
            )
        return TerminalInfo(**dict(row))


class SignIn:
    def __init__(
        self,
        pool: Pool,
        hsm: HsmClient,
        protector: DataProtector,
        audit: AuditLog,
        settings: Settings,
    ) -> None:
        self._pool, self._hsm, self._protector, self._audit = pool, hsm, protector, audit
        self._settings = settings
        # Challenges, per client address only: anybody can name any terminal id, so a
        # challenge must cost that terminal nothing.
        self._per_address = TokenBuckets(
            settings.sign_in_address_rate, settings.sign_in_address_burst
        )
        # Failed completions (a wrong cryptogram), per terminal and per address: they slow
        # down key guessing; a genuine terminal's successful sign-in spends nothing.
        self._failed_per_terminal = TokenBuckets(
            settings.sign_in_terminal_rate, settings.sign_in_terminal_burst
        )
        self._failed_per_address = TokenBuckets(
            settings.sign_in_failure_rate, settings.sign_in_failure_burst
        )

    async def start(self, terminal_id: str, client_address: str) -> SignInChallenge:
        wait = self._per_address.take(client_address, time.monotonic())
        if wait:
            raise RateLimited(
                "too many sign-in attempts from this address: try again later",
                retry_after=wait,
            )
        challenge = os.urandom(16)
        expires_at = _now() + dt.timedelta(seconds=self._settings.challenge_ttl)
        # Unknown and disabled terminals get a challenge too, one that was never stored, so
        # this public endpoint does not tell which terminal ids exist; completing it fails
        # with CHALLENGE_INVALID. A terminal keeps its newest _LIVE_CHALLENGES challenges
        # (older ones are dropped here), so the table stays bounded by the terminals.
        await self._pool.execute(
            """
            WITH added AS (
                INSERT INTO sign_in_challenges (challenge, terminal_id, expires_at)
                SELECT $1, terminal_id, $3 FROM terminals
                WHERE terminal_id = $2 AND status = 'active'
                RETURNING terminal_id
            )
            DELETE FROM sign_in_challenges c USING added a
            WHERE c.terminal_id = a.terminal_id AND c.challenge IN (
                SELECT challenge FROM sign_in_challenges WHERE terminal_id = $2
                ORDER BY expires_at DESC OFFSET $4
            )
            """,
            challenge,
            terminal_id,
            expires_at,
            _LIVE_CHALLENGES - 1,  # the statement's snapshot does not hold the new one
        )
        return SignInChallenge(challenge=challenge.hex(), expires_at=expires_at)

    def _check_failures(self, terminal_id: str, client_address: str, now: float) -> None:
        wait = self._failed_per_address.wait(client_address, now)
        what = "from this address"
        if not wait:
            wait, what = self._failed_per_terminal.wait(terminal_id, now), "for this terminal"
        if wait:
            raise RateLimited(f"too many failed sign-ins {what}: try again later", retry_after=wait)

    async def complete(self, req: SignInComplete, client_address: str) -> SessionOpened:
        rs, rt = bytes.fromhex(req.challenge), bytes.fromhex(req.terminal_random)
        self._check_failures(req.terminal_id, client_address, time.monotonic())
        async with transaction(self._pool) as conn:
            # One use per challenge, whatever the outcome.
            row = await conn.fetchrow(
                """
                DELETE FROM sign_in_challenges c USING terminals t
                WHERE c.challenge = $1 AND c.terminal_id = $2 AND t.terminal_id = c.terminal_id
                RETURNING c.expires_at, t.key_under_lmk, t.status
                """,
                rs,
                req.terminal_id,
            )
        if row is None or row["expires_at"] < _now() or row["status"] != "active":
            raise _challenge_invalid()
        try:
            result = await self._hsm.verify_terminal_cryptogram(
                row["key_under_lmk"], rs, rt, bytes.fromhex(req.cryptogram)
            )
        except HsmRejected:
            now = time.monotonic()
            self._failed_per_terminal.take(req.terminal_id, now)
            self._failed_per_address.take(client_address, now)
            log.warning("sign_in_refused", terminal_id=req.terminal_id)
            raise Unauthenticated(
                "terminal cryptogram is not valid", code="CRYPTOGRAM_INVALID"
            ) from None
        session_id = secrets.token_hex(16)
        expires_at = _now() + dt.timedelta(seconds=self._settings.session_ttl)
        async with transaction(self._pool) as conn:
            # Only while the terminal is active, and holding its row until commit: a
            # disabling waits for this session and then ends it, or comes first.
            opened = await conn.fetchval(
                "INSERT INTO terminal_sessions (session_id, terminal_id, key_enc, expires_at)"
                " SELECT $1, terminal_id, $3, $4 FROM terminals"
                " WHERE terminal_id = $2 AND status = 'active' FOR SHARE"
                " RETURNING 1",
                session_id,
                req.terminal_id,
                self._protector.encrypt(result.session_key, session_id.encode()),
                expires_at,
            )
            if not opened:  # disabled since the challenge was taken
                raise _challenge_invalid()
            await self._audit.append(
                conn,
                actor=f"terminal:{req.terminal_id}",
                action="terminal.signed_in",
                object_type="terminal",
                object_id=req.terminal_id,
                data={"session_id": session_id},
            )
        log.info("signed_in", terminal_id=req.terminal_id)
        return SessionOpened(
            session_id=session_id,
            server_cryptogram=result.server_cryptogram.hex(),
            expires_at=expires_at,
        )


class SessionCache:
    """Session keys by session id, in memory; bounded, least recently used out first."""

    def __init__(self, size: int = 20_000) -> None:
        self._size = size
        self._items: OrderedDict[str, Session] = OrderedDict()

    def get(self, session_id: str) -> Session | None:
        session = self._items.get(session_id)
        if session is not None:
            self._items.move_to_end(session_id)
        return session

    def put(self, session: Session) -> None:
        self._items[session.session_id] = session
        self._items.move_to_end(session.session_id)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def forget(self, session_id: str) -> None:
        self._items.pop(session_id, None)


class TerminalAuthenticator:
    """Turns a signed request into a ``Caller``, or refuses it with a specific 401/403."""

    def __init__(self, pool: Pool, protector: DataProtector, settings: Settings) -> None:
        self._pool, self._protector, self._settings = pool, protector, settings
        self._sessions = SessionCache()
        self._buckets = TokenBuckets(settings.terminal_rate, settings.terminal_burst)
        # The worker's admissions, group-committed: one statement for those that gathered
        # while the previous one was in flight. Closed at shutdown (``Services.batchers``).
        self.admissions = admission_batcher(pool)

    async def authenticate(
        self,
        *,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        read_body: Callable[[], Awaitable[bytes]],
        admit_in_handler: bool = False,
    ) -> Caller:
        """The caller of a signed request. The order is that of the IO each step costs:
        headers and timestamp (none), the session (the cache, else a database read that
        also refuses an ended session or a disabled terminal), and only then the body (the
        signature covers its hash), so a caller without a live session never makes the
        service read a body. Then the rate, and the admission (nonce, standing) — or, with
        ``admit_in_handler``, the admission is left in ``Caller.admission`` for the
        handler's first statement."""
        signed = signing.parse_headers(headers)
        now = time.time()
        signing.check_timestamp(signed.timestamp, now, self._settings.signature_window)
        session = await self._session(signed.session_id, signed.terminal_id)
        if session.expires_at <= now:
            raise Unauthenticated("session expired: sign in again", code="SESSION_EXPIRED")
        body = await read_body()
        signing.check_signature(session.key, signed, method, path_qs, body)
        # After the signature, so nobody can spend another terminal's allowance.
        wait = self._buckets.take(session.terminal_id, time.monotonic())
        if wait:
            raise RateLimited("too many requests from this terminal", retry_after=wait)
        admission = Admission(
            terminal_id=signed.terminal_id, nonce=signed.nonce, session_id=session.session_id
        )
        if not admit_in_handler:
            await self.admit(admission)
        structlog.contextvars.bind_contextvars(terminal_id=signed.terminal_id)
        return Caller(
            kind=session.kind,  # type: ignore[arg-type]
            terminal_id=session.terminal_id,
            session_id=session.session_id,
            fixmedins_code=session.fixmedins_code,
            admission=admission if admit_in_handler else None,
        )

    async def admit(self, admission: Admission) -> None:
        """Admit the request (nonce, standing) in the worker's next admission batch; a
        refusal is this request's own, a failed batch statement fails it (503)."""
        try:
            await self.admissions.submit(admission)
        except CardsvcError as exc:
            await self.refused(admission.session_id, exc)
            raise

    async def refused(self, session_id: str, exc: BaseException) -> None:
        """A request of this session was refused: if because the database crashed and
        nobody has fenced it yet, fence it now (every session open before the crash ends,
        this one too); if because the session ended or its terminal is disabled, drop the
        cached key, so the next request is refused by the session lookup, before its body
        is read."""
        if isinstance(exc, DatabaseCrashed):
            await fence_after_crash(self._pool)
        if isinstance(exc, CardsvcError) and exc.code in _SESSION_GONE:
            self._sessions.forget(session_id)

    async def _session(self, session_id: str, terminal_id: str) -> Session:
        cached = self._sessions.get(session_id)
        if cached is None:
            cached = await self._load_session(session_id, terminal_id)
        if cached is None or cached.terminal_id != terminal_id:
            raise session_invalid()
        return cached

    async def _load_session(self, session_id: str, terminal_id: str) -> Session | None:
        """The session, read and cached, if it is this terminal's; an ended one, or one of
        a disabled terminal, is refused (and not cached)."""
        if len(session_id) > 64:
            return None
        row = await self._pool.fetchrow(
            """
            SELECT s.terminal_id, s.key_enc, s.expires_at, s.ended_reason,
                   t.kind, t.fixmedins_code, t.status
            FROM terminal_sessions s JOIN terminals t USING (terminal_id)
            WHERE s.session_id = $1
            """,
            session_id,
        )
        if row is None or row["terminal_id"] != terminal_id:
            return None
        check_terminal(row["status"])
        check_session_open(row["ended_reason"])
        session = Session(
            session_id=session_id,
            terminal_id=row["terminal_id"],
            kind=row["kind"],
            fixmedins_code=row["fixmedins_code"],
            key=self._protector.decrypt(row["key_enc"], session_id.encode()),
            expires_at=row["expires_at"].timestamp(),
        )
        self._sessions.put(session)
        return session

    async def purge_expired(self) -> int:
        """Drop nonces older than the window, used challenges and dead sessions."""
        window = dt.timedelta(seconds=2 * self._settings.signature_window)
        async with transaction(self._pool) as conn:
            nonces = await conn.execute(
                "DELETE FROM request_nonces WHERE seen_at < $1", _now() - window
            )
            await conn.execute("DELETE FROM sign_in_challenges WHERE expires_at < now()")
            await conn.execute(
                "DELETE FROM terminal_sessions WHERE expires_at < now() - interval '1 day'"
            )
        return int(nonces.split()[-1])
