"""Admitting a signed request: record its nonce, read its session's, its terminal's and its
facility's standing.

This is the part of request authentication that needs the database. It is written as two
CTEs so that a handler on the hot path can put them in its own statements and spend no
round trip of its own on them (see ``terminal(..., admit_in_handler=True)``); ``admit``
runs them together for one request, and every other route's requests are admitted by
their worker's batcher, many in one statement and one commit (``admit_batch``).
Settlement reads the standing with its snapshot and records the nonce in its write: a
read that records nothing commits without waiting for a WAL flush, which a statement
that inserts a row and happens to prune a page would have to. Either way a nonce is
recorded once, and a suspension or disabling, or the end of the session, takes effect on
the next request.

A database crash empties ``request_nonces`` (UNLOGGED: no WAL flush per request), so a
request captured before it could be replayed after it. The UNLOGGED ``crash_marker`` row
is gone after a crash: ``fence_after_crash`` puts it back and, in the same statement, ends
every open session, which the admission then refuses. It runs on every new pool connection,
and the admission itself reads the marker too (``fenced``, in the statement that already
runs, writing nothing): behind a connection pooler cardsvc's connections outlive a crash, so
a request admitted on one finds the marker missing, the fence runs (``DatabaseCrashed``,
handled by ``TerminalAuthenticator.refused``) and the request is refused as its session
now is, ended. Only requests of sessions opened after the crash are admitted, and their
nonces are recorded again from empty. Challenges are UNLOGGED too, so none issued before a
crash survives it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import asyncpg
import structlog

from cardsvc.batching import Batcher, Outcome
from cardsvc.db import Connection, Pool
from cardsvc.errors import CardsvcError, Forbidden, Unauthenticated
from cardsvc.settlement.params import CURRENT_POLICY_VERSION, load_params
from cardsvc.web.caller import Admission

log = structlog.get_logger(__name__)

# True when ``admission_nonce`` recorded the nonce (it was new).
NONCE_FRESH = "(SELECT count(*) FROM admission_nonce) > 0"


def nonce_cte(terminal: str, nonce: str) -> str:
    """SQL of the CTE ``admission_nonce``: one row if the nonce is new (and now recorded),
    none if it was seen before. ``terminal`` and ``nonce`` are placeholders."""
    return f"""
    admission_nonce AS (
        INSERT INTO request_nonces (terminal_id, nonce) VALUES ({terminal}, {nonce})
        ON CONFLICT DO NOTHING RETURNING 1
    )"""  # noqa: S608 - placeholders only


def standing_cte(terminal: str, session: str, fresh: str = "true") -> str:
    """SQL of the CTE ``admission``: one row (none for an unknown terminal) with ``fresh``
    (the SQL expression given), ``terminal_status``, ``facility_status``,
    ``credit_rating``, ``has_facility``, ``session_found``, ``session_ended_reason``
    (NULL while the session is open) and ``fenced`` (false after a database crash nobody
    has fenced yet: the one-row ``crash_marker`` is empty). ``terminal`` and ``session``
    are placeholders. It writes nothing."""
    return f"""
    admission AS ({standing_select(terminal, session, fresh)})"""


def standing_select(terminal: str, session: str, fresh: str = "true") -> str:
    """The query of ``standing_cte``; ``terminal`` and ``session`` may also be columns of an
    outer query (a LATERAL join standing each row of a batch)."""
    return f"""
        SELECT {fresh} AS fresh,
               t.status AS terminal_status, f.status AS facility_status, f.credit_rating,
               t.fixmedins_code IS NOT NULL AS has_facility,
               s.session_id IS NOT NULL AS session_found,
               s.ended_reason AS session_ended_reason,
               EXISTS (SELECT 1 FROM crash_marker) AS fenced
        FROM terminals t LEFT JOIN facilities f USING (fixmedins_code)
        LEFT JOIN terminal_sessions s
               ON s.session_id = {session} AND s.terminal_id = t.terminal_id
        WHERE t.terminal_id = {terminal}"""  # noqa: S608 - placeholders or column names only


def admission_ctes(first: int) -> str:
    """Both, with their three parameters, terminal id, nonce and session id, numbered from
    ``first``."""
    terminal, nonce, session = f"${first}", f"${first + 1}", f"${first + 2}"
    return nonce_cte(terminal, nonce) + "," + standing_cte(terminal, session, NONCE_FRESH)


_ADMIT = f"WITH {admission_ctes(1)} SELECT * FROM admission"  # noqa: S608


def check_admission(row: asyncpg.Record | dict[str, Any] | None) -> None:
    """Refuse the request as its admission row says; ``row`` holds the columns of
    ``admission`` (None: the terminal is gone)."""
    if row is not None and not row["fenced"]:
        raise DatabaseCrashed()
    if row is None or not row["fresh"]:
        raise nonce_replayed()
    check_terminal(row["terminal_status"])
    if not row["session_found"]:
        raise session_invalid()
    check_session_open(row["session_ended_reason"])
    if row["has_facility"] and (
        row["facility_status"] != "active" or row["credit_rating"] in _suspended_ratings()
    ):
        raise Forbidden("the terminal's facility is suspended", code="FACILITY_SUSPENDED")


def _suspended_ratings() -> frozenset[str]:
    """Ratings that suspend a facility even when its status is active: the policy file's."""
    return load_params(CURRENT_POLICY_VERSION).facility_ratings.suspended


def check_terminal(status: str) -> None:
    if status != "active":
        raise Forbidden("terminal is disabled", code="TERMINAL_DISABLED")


# Why a session ended (terminal_sessions.ended_reason), as the terminal is told.
_ENDED = {
    "terminal_disabled": "the session ended when the terminal was disabled: sign in again",
    "database_restart": (
        "the session ended when the service restarted after a failure"
        " (requests signed before it are refused): sign in again"
    ),
}


def check_session_open(ended_reason: str | None) -> None:
    if ended_reason is not None:
        raise Unauthenticated(
            _ENDED.get(ended_reason, "the session ended: sign in again"),
            code="SESSION_ENDED",
            details={"reason": ended_reason},
        )


class DatabaseCrashed(Unauthenticated):
    """The database crashed and nobody has fenced it yet: every session open before the
    crash is to be ended (``fence_after_crash``), this request's among them. Whoever
    catches it runs the fence before answering (``TerminalAuthenticator.refused``)."""

    def __init__(self) -> None:
        super().__init__(
            _ENDED["database_restart"],
            code="SESSION_ENDED",
            details={"reason": "database_restart"},
        )


def session_invalid() -> Unauthenticated:
    return Unauthenticated("no such session for this terminal", code="SESSION_INVALID")


def nonce_replayed() -> Unauthenticated:
    return Unauthenticated("nonce already used", code="NONCE_REPLAYED")


async def admit(db: Pool | Connection, admission: Admission) -> None:
    """The admission in a round trip of its own."""
    admission.done = True
    check_admission(
        await db.fetchrow(_ADMIT, admission.terminal_id, admission.nonce, admission.session_id)
    )


# Admissions of many requests in one statement (``admit_batch``): every nonce of the batch
# recorded (one seen before records nothing and reads not fresh), and each request's
# standing read, one row per request in the batch's order, with the columns of
# ``standing_cte`` (``fenced`` NULL: an unknown terminal, no row). The standing is joined
# for the whole batch at once rather than by ``standing_cte`` per request, which would
# read the terminals and facilities once per request; a test holds the two to the same
# columns and answers. The nonces go in in (terminal, nonce) order, so two workers'
# batches that share nonces (a replay sent to both) wait for each other, never deadlock.
# The caller keeps one (terminal, nonce) out of a batch twice (``admission_keys``): it
# would read fresh both times.
_ADMIT_BATCH = """
WITH request AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY
        AS r(terminal_id, nonce, session_id, i)
), recorded AS (
    INSERT INTO request_nonces (terminal_id, nonce)
    SELECT terminal_id, nonce FROM request ORDER BY terminal_id, nonce
    ON CONFLICT DO NOTHING RETURNING terminal_id, nonce
)
SELECT n.nonce IS NOT NULL AS fresh,
       t.status AS terminal_status, f.status AS facility_status, f.credit_rating,
       t.fixmedins_code IS NOT NULL AS has_facility,
       s.session_id IS NOT NULL AS session_found,
       s.ended_reason AS session_ended_reason,
       CASE WHEN t.terminal_id IS NOT NULL THEN EXISTS (SELECT 1 FROM crash_marker) END
           AS fenced
FROM request r
LEFT JOIN recorded n ON n.terminal_id = r.terminal_id AND n.nonce = r.nonce
LEFT JOIN terminals t ON t.terminal_id = r.terminal_id
LEFT JOIN facilities f ON f.fixmedins_code = t.fixmedins_code
LEFT JOIN terminal_sessions s ON s.session_id = r.session_id AND s.terminal_id = t.terminal_id
ORDER BY r.i
"""

# Requests a worker admits at most in one statement.
ADMISSION_BATCH_MAX = 64


def admission_keys(admission: Admission) -> tuple[Hashable, ...]:
    """What two admissions of one batch must not share: the (terminal, nonce) recorded."""
    return ((admission.terminal_id, admission.nonce),)


async def admit_batch(
    db: Pool | Connection, admissions: Sequence[Admission]
) -> list[Outcome[None]]:
    """The admissions of many requests in one round trip and one commit: for each, in
    order, None (admitted) or its refusal, as ``check_admission`` decides (a
    ``DatabaseCrashed`` among them: the caller fences). No two may share a (terminal,
    nonce). A failed statement raises, and records none of the nonces."""
    for admission in admissions:
        admission.done = True
    rows: list[asyncpg.Record | None]
    if len(admissions) == 1:  # a lone request (an idle worker): the single statement,
        one = admissions[0]  # which costs the server less to plan and run
        rows = [await db.fetchrow(_ADMIT, one.terminal_id, one.nonce, one.session_id)]
    else:
        batch = await db.fetch(
            _ADMIT_BATCH,
            [a.terminal_id for a in admissions],
            [a.nonce for a in admissions],
            [a.session_id for a in admissions],
        )
        # ``fenced`` is NULL only for an unknown terminal: no row of ``admission``.
        rows = [None if row["fenced"] is None else row for row in batch]
    outcomes: list[Outcome[None]] = []
    for row in rows:
        try:
            check_admission(row)
        except CardsvcError as exc:
            outcomes.append(exc)
        else:
            outcomes.append(None)
    return outcomes


def admission_batcher(pool: Pool) -> Batcher[Admission, None]:
    """The batcher every admission of a worker goes through (``admit_batch``)."""

    async def run(admissions: Sequence[Admission]) -> list[Outcome[None]]:
        return await admit_batch(pool, admissions)

    return Batcher("admission", run, max_size=ADMISSION_BATCH_MAX, keys=admission_keys)


# Puts the marker back if a crash emptied it and, in the same statement (so no connection
# can admit a request between the two), ends every session open before the crash.
# A concurrent connection's insert waits for this one's commit, then finds the row.
_FENCE = """
WITH marker AS (
    INSERT INTO crash_marker DEFAULT VALUES ON CONFLICT DO NOTHING RETURNING 1
), ended AS (
    UPDATE terminal_sessions SET ended_at = now(), ended_reason = 'database_restart'
    WHERE ended_at IS NULL AND EXISTS (SELECT 1 FROM marker)
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM marker) AS crashed, (SELECT count(*) FROM ended) AS ended
"""


async def fence_after_crash(conn: Pool | Connection) -> None:
    """Run on every new pool connection (asyncpg's ``init``), and when an admission finds
    the marker missing (``DatabaseCrashed``): after a database crash, end every open
    session. One round trip per new connection, nothing per request; writes nothing unless
    the database crashed."""
    row = await conn.fetchrow(_FENCE)
    if row is not None and row["crashed"]:
        log.warning("database_crash_fenced", sessions_ended=row["ended"])
