"""Each message's admission, its reservation of the msgid and its stored answer: exactly
once per (fixmedins_code, msgid), for the answer and for what the transaction does.

The admission records the nonce (a nonce seen before is refused), reads the client's and
its facility's standing, whether ``sign_no`` is a live sign-in of the facility, and draws
the message's ``inf_refmsgid`` sequence number. A message whose transaction will run (its
envelope is sound, its infno known, its sign-in live) **reserves its msgid in the same
statement**: a row of ``gateway_messages`` holding its body hash and no answer yet, leased
until ``pending_until``. So before any transaction runs, the admission knows, for the msgid:

- nothing before: reserved, the transaction runs;
- an answer: sent again unchanged (same body) or ``MSGID_REUSED`` (another body);
- a reservation of another try: ``MSGID_REUSED`` for another body; for the same body a
  retryable ``MSGID_IN_PROGRESS`` while its lease lasts, after which (the try was cut off by
  a crash, or gave up) the same body takes the reservation over and runs again.

Another body under a msgid never runs. A try that ends without a stored answer (a failure
of a dependency, a timeout) releases its reservation (``release``) for the retry; the body
stays recorded. The store turns the reservation into the answer; when a concurrent try
stored one first, that one is answered instead, so both get the same bytes. A handler whose
work is one transaction stores its success answer in it (``store_in``): no commit of its
own. A file answer
(9102) is stored as its ``file_qury_no``, never as its bytes.

Admissions and stores are group-committed per worker (``cardsvc.batching``), as terminal
admissions are: the messages that gathered while the previous statement was in flight are
admitted (or their answers stored) in one statement and one commit; a lone message takes the
single-row form of the same statement, which costs the server less to plan. Two messages of
one msgid never share a batch. Rows older than the retention period are purged (``purge``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from cardsvc.batching import Batcher, BatcherFull, Outcome
from cardsvc.db import Connection, Pool
from cardsvc.errors import CardsvcError, Forbidden, ServiceUnavailable, Unauthenticated
from cardsvc.settlement.params import CURRENT_POLICY_VERSION, load_params

# Messages a worker admits (or stores the answers of) at most in one statement.
BATCH_MAX = 64
# Rows the retention purge deletes in one statement (one transaction each).
PURGE_CHUNK = 5000

_REQUEST_COLUMNS = "paasid, nonce, sign_no, msgid, infno, body_hash, needs_sign"

# $1..$7: the requests (as arrays, or one each); $8 the credit ratings that suspend a
# facility; $9 the reservation's lease in seconds.
_BATCH_REQUEST = f"""
    SELECT r.*, nextval('gateway_refmsg_seq') AS sequence
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[],
                $7::bool[]) WITH ORDINALITY AS r({_REQUEST_COLUMNS}, i)"""  # noqa: S608

_ONE_REQUEST = """
    SELECT $1::text AS paasid, $2::text AS nonce, $3::text AS sign_no, $4::text AS msgid,
           $5::text AS infno, $6::bytea AS body_hash, $7::bool AS needs_sign, 1::bigint AS i,
           nextval('gateway_refmsg_seq') AS sequence"""

_ADMIT = """
WITH request AS ({request}
), recorded AS (
    INSERT INTO gateway_nonces (paasid, nonce)
    SELECT paasid, nonce FROM request ORDER BY paasid, nonce
    ON CONFLICT DO NOTHING RETURNING paasid, nonce
), standing AS (
    SELECT r.i, r.paasid, r.msgid, r.infno, r.body_hash, r.needs_sign, r.sequence,
           c.fixmedins_code, c.paasid IS NOT NULL AS known, n.nonce IS NOT NULL AS fresh,
           c.status = 'active' AS client_active,
           f.status = 'active' AND f.credit_rating <> ALL($8::text[]) AS facility_active,
           EXISTS (SELECT 1 FROM gateway_signins s
                   WHERE s.sign_no = r.sign_no AND s.fixmedins_code = c.fixmedins_code
                     AND s.signed_out_at IS NULL AND s.expires_at > now()) AS signed_in
    FROM request r
    LEFT JOIN recorded n ON n.paasid = r.paasid AND n.nonce = r.nonce
    LEFT JOIN gateway_clients c ON c.paasid = r.paasid
    LEFT JOIN facilities f ON f.fixmedins_code = c.fixmedins_code
), reserved AS ({reserve}
    SELECT fixmedins_code, msgid, infno, body_hash, paasid,
           now() + make_interval(secs => $9::float8), sequence
    FROM standing
    WHERE known AND fresh AND client_active AND facility_active
      AND body_hash IS NOT NULL AND (signed_in OR NOT needs_sign)
    ORDER BY fixmedins_code, msgid
    {on_conflict}
)
SELECT s.*, rs.owner IS NOT NULL AS reserved, s.body_hash IS NOT NULL
           AND (s.signed_in OR NOT s.needs_sign) AS reserving,
       m.body_hash AS stored_hash, m.infcode, m.content_type, m.answer, m.file_qury_no
FROM standing s
LEFT JOIN reserved rs ON rs.owner = s.sequence
LEFT JOIN gateway_messages m ON m.fixmedins_code = s.fixmedins_code AND m.msgid = s.msgid
ORDER BY s.i
"""

_RESERVE = """
    INSERT INTO gateway_messages AS m
        (fixmedins_code, msgid, infno, body_hash, paasid, pending_until, owner)"""

# A reservation whose lease has passed is taken over by the same body (never another).
_TAKE_OVER = """
    ON CONFLICT (fixmedins_code, msgid) DO UPDATE
        SET pending_until = EXCLUDED.pending_until, owner = EXCLUDED.owner,
            paasid = EXCLUDED.paasid
        WHERE m.infcode IS NULL AND m.pending_until <= now()
          AND m.body_hash = EXCLUDED.body_hash
    RETURNING owner"""


def _admit_sql(request: str) -> str:
    return _ADMIT.format(request=request, reserve=_RESERVE, on_conflict=_TAKE_OVER)


_ADMIT_ONE = _admit_sql(_ONE_REQUEST)
_ADMIT_BATCH = _admit_sql(_BATCH_REQUEST)

# A reservation that met a concurrent admission's (another worker's) row it could not see:
# tried again, now that that row is committed.
_RESERVE_AGAIN = f"""
WITH reserved AS ({_RESERVE}
    VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6::float8), $7)
    {_TAKE_OVER}
)
SELECT (SELECT count(*) FROM reserved) > 0 AS reserved
"""  # noqa: S608 - constant text only

_COLUMNS = (
    "fixmedins_code, msgid, infno, body_hash, paasid, inf_refmsgid, infcode, content_type,"
    " answer, file_qury_no"
)

# The answer replaces the message's reservation (or, had it gone, is inserted); an answer
# stored first by a concurrent try of the same body is kept.
_ON_ANSWER = """
    ON CONFLICT (fixmedins_code, msgid) DO UPDATE
        SET inf_refmsgid = EXCLUDED.inf_refmsgid, infcode = EXCLUDED.infcode,
            content_type = EXCLUDED.content_type, answer = EXCLUDED.answer,
            file_qury_no = EXCLUDED.file_qury_no, pending_until = NULL, owner = NULL
        WHERE m.infcode IS NULL AND m.body_hash = EXCLUDED.body_hash"""

_STORE = f"""
INSERT INTO gateway_messages AS m ({_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
{_ON_ANSWER}
RETURNING true AS ours
"""  # noqa: S608 - constant text only

_STORE_BATCH = f"""
WITH request AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[],
                         $6::text[], $7::smallint[], $8::text[], $9::bytea[], $10::text[])
        WITH ORDINALITY AS r({_COLUMNS}, i)
), stored AS (
    INSERT INTO gateway_messages AS m ({_COLUMNS})
    SELECT {_COLUMNS} FROM request ORDER BY fixmedins_code, msgid
    {_ON_ANSWER}
    RETURNING fixmedins_code, msgid
)
SELECT s.msgid IS NOT NULL AS ours
FROM request r LEFT JOIN stored s USING (fixmedins_code, msgid)
ORDER BY r.i
"""  # noqa: S608 - constant text only

_STORED = (
    "SELECT body_hash, infcode, content_type, answer, file_qury_no FROM gateway_messages"
    " WHERE fixmedins_code = $1 AND msgid = $2"
)

_RELEASE = (
    "UPDATE gateway_messages SET pending_until = now()"
    " WHERE fixmedins_code = $1 AND msgid = $2 AND owner = $3 AND infcode IS NULL"
)

_PURGE = """
DELETE FROM gateway_messages WHERE (fixmedins_code, msgid) IN (
    SELECT fixmedins_code, msgid FROM gateway_messages
    WHERE created_at < now() - make_interval(secs => $1::float8)
    LIMIT $2
)
"""


@dataclass(frozen=True, slots=True)
class Stored:
    """An answer as it was sent: its bytes, or (a file) the number of the stored file."""

    body_hash: bytes
    content_type: str
    answer: bytes | None
    file_qury_no: str | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """What a message whose transaction will run reserves its msgid with."""

    infno: str
    body_hash: bytes
    needs_sign_no: bool  # reserved only if its sign_no is live, then


@dataclass(frozen=True, slots=True)
class Admitted:
    signed_in: bool
    sequence: int
    stored: Stored | None  # the msgid's answer
    reserved: bool = False  # the msgid is this message's: run its transaction
    pending: bytes | None = None  # the body hash of another try's live reservation


@dataclass(frozen=True, slots=True)
class Admission:
    paasid: str
    nonce: str
    sign_no: str
    msgid: str
    fixmedins_code: str = ""  # the client's (its messages of one msgid never share a batch)
    reservation: Reservation | None = None


@dataclass(frozen=True, slots=True)
class NewAnswer:
    fixmedins_code: str
    msgid: str
    infno: str
    body_hash: bytes
    paasid: str
    inf_refmsgid: str
    infcode: int
    content_type: str
    answer: bytes | None
    file_qury_no: str | None = None


def _stored(row: asyncpg.Record, hash_column: str = "body_hash") -> Stored | None:
    """The answer of a row (None: a reservation, no answer yet)."""
    if row["infcode"] is None:
        return None
    answer = row["answer"]
    return Stored(
        bytes(row[hash_column]),
        row["content_type"],
        None if answer is None else bytes(answer),
        row["file_qury_no"],
    )


def _standing(row: asyncpg.Record | None) -> asyncpg.Record:
    """Refuses a replay, a disabled client and a suspended facility (each an
    authentication failure: HTTP 4xx)."""
    if row is None or not row["known"]:  # gone since its secret was cached (no deleting)
        raise Unauthenticated("no such gateway client", code="GATEWAY_CLIENT_UNKNOWN")
    if not row["fresh"]:
        raise Unauthenticated("x-tif-nonce was used before", code="NONCE_REPLAYED")
    if not row["client_active"]:
        raise Forbidden("the gateway client is disabled", code="GATEWAY_CLIENT_DISABLED")
    if not row["facility_active"]:
        raise Forbidden("the client's facility is suspended", code="FACILITY_SUSPENDED")
    return row


def _admitted(row: asyncpg.Record) -> Admitted:
    stored = _stored(row, "stored_hash")
    pending = None
    if stored is None and not row["reserved"] and row["stored_hash"] is not None:
        pending = bytes(row["stored_hash"])
    return Admitted(
        signed_in=row["signed_in"],
        sequence=row["sequence"],
        stored=stored,
        reserved=row["reserved"],
        pending=pending,
    )


def _lost_race(row: asyncpg.Record) -> bool:
    """A reservation that met a row its statement could not see (another worker's
    admission of the msgid, committed while this one waited for it)."""
    return bool(row["reserving"] and not row["reserved"] and row["stored_hash"] is None)


async def _reserve_again(pool: Pool, job: Admission, row: asyncpg.Record, lease: float) -> Admitted:
    reservation = job.reservation
    if reservation is None:  # _lost_race saw to it
        raise RuntimeError("no reservation to make")
    reserved = await pool.fetchval(
        _RESERVE_AGAIN,
        row["fixmedins_code"],
        job.msgid,
        reservation.infno,
        reservation.body_hash,
        job.paasid,
        lease,
        row["sequence"],
    )
    signed_in, sequence = row["signed_in"], row["sequence"]
    if reserved:
        return Admitted(signed_in, sequence, None, reserved=True)
    found = await pool.fetchrow(_STORED, row["fixmedins_code"], job.msgid)
    if found is None:  # gone again (its try failed, or purged): busy, the HIS sends it again
        return Admitted(signed_in, sequence, None, pending=reservation.body_hash)
    stored = _stored(found)
    pending = None if stored is not None else bytes(found["body_hash"])
    return Admitted(signed_in, sequence, stored, pending=pending)


async def admit_batch(
    pool: Pool, jobs: Sequence[Admission], lease: float = 20.0
) -> list[Outcome[Admitted]]:
    """The admissions (and reservations) of many messages in one round trip and one
    commit, in order; ``lease``: seconds a reservation holds its msgid."""
    suspended = sorted(load_params(CURRENT_POLICY_VERSION).facility_ratings.suspended)
    columns: list[list[Any]] = [
        [j.paasid for j in jobs],
        [j.nonce for j in jobs],
        [j.sign_no for j in jobs],
        [j.msgid for j in jobs],
        [j.reservation.infno if j.reservation else "" for j in jobs],
        [j.reservation.body_hash if j.reservation else None for j in jobs],
        [j.reservation.needs_sign_no if j.reservation else False for j in jobs],
    ]
    if len(jobs) == 1:
        rows = await pool.fetch(_ADMIT_ONE, *(column[0] for column in columns), suspended, lease)
    else:
        rows = await pool.fetch(_ADMIT_BATCH, *columns, suspended, lease)
    outcomes: list[Outcome[Admitted]] = []
    for job, row in zip(jobs, rows, strict=True):
        try:
            _standing(row)
            if _lost_race(row):
                outcomes.append(await _reserve_again(pool, job, row, lease))
            else:
                outcomes.append(_admitted(row))
        except CardsvcError as exc:
            outcomes.append(exc)
    return outcomes


async def store_batch(pool: Pool, jobs: Sequence[NewAnswer]) -> list[Outcome[Stored | None]]:
    """Stores the answers of many messages in one round trip and one commit: for each, in
    order, None (stored) or the answer a concurrent twin stored first."""
    columns: list[list[Any]] = [
        [j.fixmedins_code for j in jobs],
        [j.msgid for j in jobs],
        [j.infno for j in jobs],
        [j.body_hash for j in jobs],
        [j.paasid for j in jobs],
        [j.inf_refmsgid for j in jobs],
        [j.infcode for j in jobs],
        [j.content_type for j in jobs],
        [j.answer for j in jobs],
        [j.file_qury_no for j in jobs],
    ]
    if len(jobs) == 1:
        flags = [bool(await pool.fetchval(_STORE, *(column[0] for column in columns)))]
    else:
        flags = [row["ours"] for row in await pool.fetch(_STORE_BATCH, *columns)]
    outcomes: list[Outcome[Stored | None]] = []
    for job, ours in zip(jobs, flags, strict=True):
        if ours:
            outcomes.append(None)
            continue
        # A twin stored first (rare): its answer, read after its commit.
        row = await pool.fetchrow(_STORED, job.fixmedins_code, job.msgid)
        stored = None if row is None else _stored(row)
        outcomes.append(
            ServiceUnavailable(
                "the message's answer could not be stored: send it again with the same msgid",
                code="MSGID_IN_PROGRESS",
            )
            if stored is None
            else stored
        )
    return outcomes


async def store_in(conn: Connection, new: NewAnswer) -> bool:
    """Stores a success answer in the caller's transaction (the handler's, so the work and
    its answer commit together): False if a concurrent twin stored one first (the caller
    rolls its work back and answers that one: ``stored``)."""
    row = await conn.fetchval(
        _STORE,
        new.fixmedins_code,
        new.msgid,
        new.infno,
        new.body_hash,
        new.paasid,
        new.inf_refmsgid,
        new.infcode,
        new.content_type,
        new.answer,
        new.file_qury_no,
    )
    return bool(row)


async def stored(pool: Pool, fixmedins_code: str, msgid: str) -> Stored | None:
    """The msgid's stored answer (None: none, or only a reservation)."""
    row = await pool.fetchrow(_STORED, fixmedins_code, msgid)
    return None if row is None else _stored(row)


async def release(pool: Pool, fixmedins_code: str, msgid: str, owner: int) -> None:
    """Ends this admission's reservation without an answer: the next try of the same
    body runs at once (another body is still refused)."""
    await pool.execute(_RELEASE, fixmedins_code, msgid, owner)


async def purge(pool: Pool, retention: dt.timedelta) -> int:
    """Deletes the answers and reservations older than ``retention``, in chunks (one
    transaction each); returns how many."""
    total = 0
    while True:
        status = await pool.execute(_PURGE, retention.total_seconds(), PURGE_CHUNK)
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < PURGE_CHUNK:
            return total


def _busy() -> ServiceUnavailable:
    return ServiceUnavailable(
        "too many gateway messages are waiting in this worker: send again in a moment",
        code="GATEWAY_QUEUE_FULL",
    )


def _admission_keys(job: Admission) -> tuple[Hashable, ...]:
    if job.reservation is None:
        return ((job.paasid, job.nonce),)
    return ((job.paasid, job.nonce), (job.fixmedins_code, job.msgid))


def _store_keys(job: NewAnswer) -> tuple[Hashable, ...]:
    return ((job.fixmedins_code, job.msgid),)


class Messages:
    """A worker's two batchers; closed at shutdown (``Services.batchers``). ``lease``:
    seconds a reservation holds its msgid against another try of the same body."""

    def __init__(self, pool: Pool, lease: float = 20.0) -> None:
        self._pool, self.lease = pool, lease

        async def admit_run(jobs: Sequence[Admission]) -> list[Outcome[Admitted]]:
            return await admit_batch(pool, jobs, lease)

        async def store_run(jobs: Sequence[NewAnswer]) -> list[Outcome[Stored | None]]:
            return await store_batch(pool, jobs)

        self.admissions: Batcher[Admission, Admitted] = Batcher(
            "gateway_admission", admit_run, max_size=BATCH_MAX, keys=_admission_keys
        )
        self.answers: Batcher[NewAnswer, Stored | None] = Batcher(
            "gateway_answer", store_run, max_size=BATCH_MAX, keys=_store_keys
        )

    async def admit(self, job: Admission) -> Admitted:
        try:
            return await self.admissions.submit(job)
        except BatcherFull:
            raise _busy() from None

    async def store(self, new: NewAnswer) -> tuple[bool, Stored]:
        """Stores the answer: (True, it) — or (False, the answer a concurrent twin stored
        first)."""
        try:
            twin = await self.answers.submit(new)
        except BatcherFull:
            raise _busy() from None
        if twin is None:
            return True, Stored(new.body_hash, new.content_type, new.answer, new.file_qury_no)
        return False, twin

    async def release(self, fixmedins_code: str, msgid: str, owner: int) -> None:
        await release(self._pool, fixmedins_code, msgid, owner)

    async def purge(self, retention: dt.timedelta) -> int:
        return await purge(self._pool, retention)
