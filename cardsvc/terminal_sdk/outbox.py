"""Store-and-forward for a POS's money-moving requests (docs/readers.md, Outbox).

A settlement request is written to a small SQLite file *before* it is sent, and stays there
until the service has answered it for good, so neither a lost response nor a terminal restart
leaves a visit whose outcome nobody knows:

- ``settle``: sent with its ``Idempotency-Key``; retried with the same key and body on no
  answer (network error, timeout, 5xx, 408, 429) — the service answers a repeat with the
  stored settlement. ``200`` is ``done``; any other 4xx is ``refused`` (nothing was written).
  After ``settle_attempts`` tries or ``settle_ttl`` seconds it is given up and becomes a
  ``void``, as a payment switch sends a reversal advice for an authorisation it never heard
  back from.
- ``void``: learns whether the settlement exists without ever creating one: the same key with
  the card token replaced by ``void``. A token the service refuses sends it to the key: a
  settlement that exists is answered (``200`` with it, the token not being part of the
  request's identity, or ``409 IDEMPOTENCY_MISMATCH`` naming its ``setl_id`` if the body
  differs) and the void turns into a ``reverse``; an unknown key answers
  ``401 CARD_TOKEN_INVALID``: nothing was settled and nothing can be (``done``).
- ``reverse``: ``POST /v1/settlements/{setl_id}/reverse``, idempotent on the service.

Voids and reversals never expire: after ``followup_attempts`` tries they are ``stuck`` and
listed for an operator (``python -m cardsvc.terminal_sdk outbox``). Bodies hold card tokens (short-
lived bearer secrets) only while a settle is pending: finished entries are scrubbed, and the
file is created 0600.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import aiohttp
import msgspec

from cardsvc.terminal_sdk.client import Response, TerminalError

Kind = Literal["settle", "void", "reverse"]
Status = Literal["pending", "done", "refused", "stuck"]
VOID_TOKEN = "void"  # noqa: S105 - deliberately not a token: it can never settle
SETTLE_PATH = "/v1/settlements"
# The only outcomes that mean "ask again later": the service did not decide.
RETRYABLE_STATUSES = frozenset({408, 429})

Sender = Callable[[str, str, Any, dict[str, str]], Awaitable[Response]]


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    kind: Kind
    terminal_id: str
    path: str
    body: dict[str, Any]
    status: Status = "pending"
    attempts: int = 0
    created_at: float
    expires_at: float | None = None
    next_try_at: float = 0.0
    result: dict[str, Any] | None = None
    answer_status: int | None = None  # the HTTP status that decided it
    error: str | None = None


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    settle_attempts: int = 5
    settle_ttl: float = 600.0
    followup_attempts: int = 20
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    retain_seconds: float = 30 * 86400.0


class SettlementPending(Exception):
    """No answer yet: the outcome is unknown. The entry stays in the outbox, is retried with
    the same key, and is voided (reversed if it happened) when it cannot be confirmed."""

    def __init__(self, key: str, reason: str, kind: Kind = "settle") -> None:
        super().__init__(
            f"no answer for {key} ({reason}): kept in the outbox, retried with the same key"
        )
        self.key, self.reason, self.kind = key, reason, kind


# ---------------------------------------------------------------------- pure transitions
def new_settle(
    terminal_id: str, body: dict[str, Any], key: str, now: float, policy: Policy
) -> Entry:
    return Entry(
        key=key,
        kind="settle",
        terminal_id=terminal_id,
        path=SETTLE_PATH,
        body=body,
        created_at=now,
        expires_at=now + policy.settle_ttl,
    )


def new_reverse(terminal_id: str, setl_id: str, reason: str, now: float) -> Entry:
    return Entry(
        key=f"reverse:{setl_id}",
        kind="reverse",
        terminal_id=terminal_id,
        path=f"/v1/settlements/{setl_id}/reverse",
        body={"reason": reason},
        created_at=now,
    )


def _scrubbed(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "card_token": ""} if "card_token" in body else body


def to_void(entry: Entry, now: float) -> Entry:
    return msgspec.structs.replace(
        entry,
        kind="void",
        body={**entry.body, "card_token": VOID_TOKEN},
        attempts=0,
        expires_at=None,
        next_try_at=now,
        error=f"given up after {entry.attempts} tries: voiding",
    )


def to_reverse(entry: Entry, setl_id: str, now: float) -> Entry:
    return msgspec.structs.replace(
        entry,
        kind="reverse",
        path=f"/v1/settlements/{setl_id}/reverse",
        body={"reason": "void: the settle response was never received"},
        attempts=0,
        next_try_at=now,
        result={"setl_id": setl_id},
    )


def finish(
    entry: Entry,
    status: Status,
    result: Any = None,
    error: str | None = None,
    answer_status: int | None = None,
) -> Entry:
    return msgspec.structs.replace(
        entry,
        status=status,
        body=_scrubbed(entry.body),
        result=result,
        error=error,
        answer_status=answer_status,
    )


def expired(entry: Entry, now: float) -> bool:
    return entry.kind == "settle" and entry.expires_at is not None and now >= entry.expires_at


def after_no_answer(entry: Entry, reason: str, now: float, policy: Policy) -> Entry:
    """One more try without an answer: back off, give a settle up (void), or get stuck."""
    attempts = entry.attempts + 1
    tried = msgspec.structs.replace(entry, attempts=attempts, error=reason)
    if entry.kind == "settle" and (attempts >= policy.settle_attempts or expired(tried, now)):
        return to_void(tried, now)
    if entry.kind != "settle" and attempts >= policy.followup_attempts:
        return finish(tried, "stuck", error=reason)
    delay = min(policy.backoff_cap, policy.backoff_base * 2 ** (attempts - 1))
    return msgspec.structs.replace(tried, next_try_at=now + delay)


def _error(body: Any) -> dict[str, Any]:
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _error_code(resp: Response) -> str:
    return str(_error(resp.body).get("code", ""))


def _decided(resp: Response) -> bool:
    return 200 <= resp.status < 500 and resp.status not in RETRYABLE_STATUSES


def after_answer(entry: Entry, resp: Response, now: float, policy: Policy) -> Entry:
    """The entry once the service answered ``resp``."""
    if entry.kind == "void":
        return _after_void_answer(entry, resp, now, policy)
    if not _decided(resp):
        reason = f"HTTP {resp.status} {_error_code(resp)}".strip()
        return after_no_answer(entry, reason, now, policy)
    status: Status = "done" if resp.status == 200 else "refused"
    error = None if status == "done" else f"{resp.status} {_error_code(resp)}"
    return finish(entry, status, result=resp.body, error=error, answer_status=resp.status)


def _after_void_answer(entry: Entry, resp: Response, now: float, policy: Policy) -> Entry:
    code = _error_code(resp)
    setl_id = _existing_setl_id(resp)
    if setl_id is not None:
        return to_reverse(entry, setl_id, now)
    if resp.status == 401 and code == "CARD_TOKEN_INVALID":
        return finish(entry, "done", result={"settled": False}, answer_status=resp.status)
    return after_no_answer(entry, f"void probe answered {resp.status} {code}".strip(), now, policy)


def _existing_setl_id(resp: Response) -> str | None:
    """The settlement a void probe found: named by the 409, or (never expected) settled."""
    if resp.status == 409 and _error_code(resp) == "IDEMPOTENCY_MISMATCH":
        details = _error(resp.body).get("details")
        setl_id = details.get("setl_id") if isinstance(details, dict) else None
    elif resp.status == 200 and isinstance(resp.body, dict):
        setl_id = resp.body.get("setl_id")
    else:
        setl_id = None
    return str(setl_id) if setl_id else None


# ---------------------------------------------------------------------- storage
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,
    entry TEXT NOT NULL,
    status TEXT NOT NULL,
    next_try_at REAL NOT NULL,
    created_at REAL NOT NULL
)
"""
_entry_decoder = msgspec.json.Decoder(Entry)
_encoder = msgspec.json.Encoder()


class Outbox:
    """The outbox file. Every write is its own committed, fsynced SQLite transaction."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.path, self._clock = path, clock
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def put(self, entry: Entry) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO outbox (key, entry, status, next_try_at, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (entry.key, _encoder.encode(entry), entry.status, entry.next_try_at, entry.created_at),
        )

    def get(self, key: str) -> Entry | None:
        row = self._db.execute("SELECT entry FROM outbox WHERE key = ?", (key,)).fetchone()
        return None if row is None else _entry_decoder.decode(row[0])

    def pending(self, *, due_by: float | None = None) -> list[Entry]:
        query = "SELECT entry FROM outbox WHERE status = 'pending'"
        params: tuple[float, ...] = ()
        if due_by is not None:
            query, params = query + " AND next_try_at <= ?", (due_by,)
        rows = self._db.execute(query + " ORDER BY created_at", params).fetchall()
        return [_entry_decoder.decode(row[0]) for row in rows]

    def entries(self, limit: int = 50) -> list[Entry]:
        rows = self._db.execute(
            "SELECT entry FROM outbox ORDER BY created_at DESC LIMIT ?", (limit,)
        ).fetchall()
        return [_entry_decoder.decode(row[0]) for row in rows]

    def prune(self, older_than: float) -> int:
        """Forget finished entries created before ``older_than``; pending ones are kept."""
        cursor = self._db.execute(
            "DELETE FROM outbox WHERE status != 'pending' AND created_at < ?", (older_than,)
        )
        return cursor.rowcount


# ---------------------------------------------------------------------- delivery
def new_idempotency_key() -> str:
    return "IK" + secrets.token_hex(16)


def _no_answer_errors() -> tuple[type[BaseException], ...]:
    return (aiohttp.ClientError, OSError, TimeoutError)


class Forwarder:
    """Sends outbox entries through ``send`` (``TerminalClient.request``) and records each
    outcome before acting on it."""

    def __init__(
        self,
        outbox: Outbox,
        send: Sender,
        terminal_id: str,
        *,
        policy: Policy | None = None,
        request_timeout: float = 10.0,
        immediate_delays: tuple[float, ...] = (0.2, 0.5),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox, self._send, self.terminal_id = outbox, send, terminal_id
        self.policy = policy or Policy()
        self._timeout, self._delays, self._clock = request_timeout, immediate_delays, clock

    async def settle(self, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        """Settle through the outbox: the settlement, ``TerminalError`` if refused, or
        ``SettlementPending`` when the service could not be heard within a few quick tries."""
        entry = new_settle(
            self.terminal_id, body, key or new_idempotency_key(), self._clock(), self.policy
        )
        self.outbox.put(entry)
        return await self._until_decided(entry)

    async def reverse(self, setl_id: str, reason: str = "requested by facility") -> dict[str, Any]:
        entry = new_reverse(self.terminal_id, setl_id, reason, self._clock())
        self.outbox.put(entry)
        return await self._until_decided(entry)

    async def _until_decided(self, entry: Entry) -> dict[str, Any]:
        kind = entry.kind
        for delay in (*self._delays, None):
            entry = await self.deliver(entry)
            if entry.status != "pending" or entry.kind != kind:
                break
            if delay is not None:
                await asyncio.sleep(delay)
        if entry.kind != kind:  # given up and voided: not this request's answer
            raise SettlementPending(entry.key, entry.error or "given up", kind)
        return _outcome(entry)

    async def deliver(self, entry: Entry) -> Entry:
        """One try (a void that finds its settlement goes on to reverse it at once)."""
        if expired(entry, self._clock()):
            entry = to_void(entry, self._clock())
        kind = entry.kind
        entry = await self._try_once(entry)
        self.outbox.put(entry)
        if kind == "void" and entry.kind == "reverse":
            return await self.deliver(entry)
        return entry

    async def _try_once(self, entry: Entry) -> Entry:
        headers = {} if entry.kind == "reverse" else {"Idempotency-Key": entry.key}
        try:
            async with asyncio.timeout(self._timeout):
                resp = await self._send("POST", entry.path, entry.body, headers)
        except _no_answer_errors() as exc:
            reason = type(exc).__name__ + (f": {exc}" if str(exc) else "")
            return after_no_answer(entry, reason, self._clock(), self.policy)
        return after_answer(entry, resp, self._clock(), self.policy)

    async def drain(self, *, due_only: bool = True) -> list[Entry]:
        """Deliver what is pending (only what is due, unless told otherwise); the results."""
        now = self._clock()
        self.outbox.prune(now - self.policy.retain_seconds)
        due = self.outbox.pending(due_by=now if due_only else None)
        return [await self.deliver(entry) for entry in due if entry.terminal_id == self.terminal_id]


def _outcome(entry: Entry) -> dict[str, Any]:
    if entry.status == "done" and entry.result is not None:
        return entry.result
    if entry.status == "refused":
        raise _refusal(entry)
    raise SettlementPending(entry.key, entry.error or "no answer", entry.kind)


def _refusal(entry: Entry) -> TerminalError:
    error = _error(entry.result)
    details = error.get("details")
    return TerminalError(
        entry.answer_status or 0,
        str(error.get("code", "REFUSED")),
        str(error.get("message", entry.error or "")),
        details if isinstance(details, dict) else {},
    )
