"""Each message's admission and its stored answer: exactly once per (fixmedins_code, msgid).

The admission records the nonce (a nonce seen before is refused), reads the client's and
its facility's standing, whether ``sign_no`` is a live sign-in of the facility, the answer
stored for the msgid if any, and draws the message's ``inf_refmsgid`` sequence number.
The store keeps a handler's answer; when a concurrent retry stored one first, that one is
answered instead, so both get the same bytes.

Both are group-committed per worker (``cardsvc.batching``), as terminal admissions are:
the messages that gathered while the previous statement was in flight are admitted (or
their answers stored) in one statement and one commit; a lone message takes the single
statement, which costs the server less to plan.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import asyncpg

from cardsvc.batching import Batcher, BatcherFull, Outcome
from cardsvc.db import Pool
from cardsvc.errors import CardsvcError, Forbidden, ServiceUnavailable, Unauthenticated
from cardsvc.settlement.params import CURRENT_POLICY_VERSION, load_params

# Messages a worker admits (or stores the answers of) at most in one statement.
BATCH_MAX = 64

_STANDING = """
       c.status AS client_status, f.status AS facility_status, f.credit_rating,
       EXISTS (SELECT 1 FROM gateway_signins s
               WHERE s.sign_no = {sign_no} AND s.fixmedins_code = c.fixmedins_code
                 AND s.signed_out_at IS NULL AND s.expires_at > now()) AS signed_in,
       m.body_hash, m.content_type, m.answer,
       nextval('gateway_refmsg_seq') AS sequence"""

_ADMIT = f"""
WITH nonce AS (
    INSERT INTO gateway_nonces (paasid, nonce) VALUES ($1, $2)
    ON CONFLICT DO NOTHING RETURNING 1
)
SELECT (SELECT count(*) FROM nonce) > 0 AS fresh, {_STANDING.format(sign_no="$3")}
FROM gateway_clients c JOIN facilities f USING (fixmedins_code)
LEFT JOIN gateway_messages m ON m.fixmedins_code = c.fixmedins_code AND m.msgid = $4
WHERE c.paasid = $1
"""  # noqa: S608 - constant text only

_ADMIT_BATCH = f"""
WITH request AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY
        AS r(paasid, nonce, sign_no, msgid, i)
), recorded AS (
    INSERT INTO gateway_nonces (paasid, nonce)
    SELECT paasid, nonce FROM request ORDER BY paasid, nonce
    ON CONFLICT DO NOTHING RETURNING paasid, nonce
)
SELECT n.nonce IS NOT NULL AS fresh, c.paasid IS NOT NULL AS known,
       {_STANDING.format(sign_no="r.sign_no")}
FROM request r
LEFT JOIN recorded n ON n.paasid = r.paasid AND n.nonce = r.nonce
LEFT JOIN gateway_clients c ON c.paasid = r.paasid
LEFT JOIN facilities f ON f.fixmedins_code = c.fixmedins_code
LEFT JOIN gateway_messages m ON m.fixmedins_code = c.fixmedins_code AND m.msgid = r.msgid
ORDER BY r.i
"""  # noqa: S608 - constant text only

_COLUMNS = (
    "fixmedins_code, msgid, infno, body_hash, paasid, inf_refmsgid, infcode, content_type, answer"
)

_STORE = f"""
INSERT INTO gateway_messages ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (fixmedins_code, msgid) DO NOTHING RETURNING true AS ours
"""  # noqa: S608 - constant text only

_STORE_BATCH = f"""
WITH request AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[],
                         $6::text[], $7::smallint[], $8::text[], $9::bytea[]) WITH ORDINALITY
        AS r({_COLUMNS}, i)
), stored AS (
    INSERT INTO gateway_messages ({_COLUMNS})
    SELECT {_COLUMNS} FROM request ORDER BY fixmedins_code, msgid
    ON CONFLICT (fixmedins_code, msgid) DO NOTHING RETURNING fixmedins_code, msgid
)
SELECT s.msgid IS NOT NULL AS ours
FROM request r LEFT JOIN stored s USING (fixmedins_code, msgid)
ORDER BY r.i
"""  # noqa: S608 - constant text only

_STORED = (
    "SELECT body_hash, content_type, answer FROM gateway_messages"
    " WHERE fixmedins_code = $1 AND msgid = $2"
)


@dataclass(frozen=True, slots=True)
class Stored:
    """An answer as it was sent."""

    body_hash: bytes
    content_type: str
    answer: bytes


@dataclass(frozen=True, slots=True)
class Admitted:
    signed_in: bool
    sequence: int
    stored: Stored | None


@dataclass(frozen=True, slots=True)
class Admission:
    paasid: str
    nonce: str
    sign_no: str
    msgid: str


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
    answer: bytes


def _stored(row: asyncpg.Record) -> Stored | None:
    if row["body_hash"] is None:
        return None
    return Stored(bytes(row["body_hash"]), row["content_type"], bytes(row["answer"]))


def _admitted(row: asyncpg.Record | None) -> Admitted:
    """The admission's outcome as its row says: refuses a replay, a disabled client and a
    suspended facility (each an authentication failure: HTTP 4xx)."""
    if row is None:  # gone since its secret was cached (there is no deleting, but still)
        raise Unauthenticated("no such gateway client", code="GATEWAY_CLIENT_UNKNOWN")
    if not row["fresh"]:
        raise Unauthenticated("x-tif-nonce was used before", code="NONCE_REPLAYED")
    if row["client_status"] != "active":
        raise Forbidden("the gateway client is disabled", code="GATEWAY_CLIENT_DISABLED")
    suspended = load_params(CURRENT_POLICY_VERSION).facility_ratings.suspended
    if row["facility_status"] != "active" or row["credit_rating"] in suspended:
        raise Forbidden("the client's facility is suspended", code="FACILITY_SUSPENDED")
    return Admitted(signed_in=row["signed_in"], sequence=row["sequence"], stored=_stored(row))


def _outcome(row: asyncpg.Record | None) -> Outcome[Admitted]:
    try:
        return _admitted(row)
    except CardsvcError as exc:
        return exc


async def admit_batch(pool: Pool, jobs: Sequence[Admission]) -> list[Outcome[Admitted]]:
    """The admissions of many messages in one round trip and one commit, in order."""
    if len(jobs) == 1:
        one = jobs[0]
        return [
            _outcome(await pool.fetchrow(_ADMIT, one.paasid, one.nonce, one.sign_no, one.msgid))
        ]
    rows = await pool.fetch(
        _ADMIT_BATCH,
        [j.paasid for j in jobs],
        [j.nonce for j in jobs],
        [j.sign_no for j in jobs],
        [j.msgid for j in jobs],
    )
    return [_outcome(row if row["known"] else None) for row in rows]


async def store_batch(pool: Pool, jobs: Sequence[NewAnswer]) -> list[Outcome[Stored | None]]:
    """Stores the answers of many messages in one round trip and one commit: for each, in
    order, None (stored) or the answer a concurrent twin stored first."""
    if len(jobs) == 1:
        j = jobs[0]
        ours = await pool.fetchval(
            _STORE,
            j.fixmedins_code,
            j.msgid,
            j.infno,
            j.body_hash,
            j.paasid,
            j.inf_refmsgid,
            j.infcode,
            j.content_type,
            j.answer,
        )
        flags = [bool(ours)]
    else:
        rows = await pool.fetch(
            _STORE_BATCH,
            [j.fixmedins_code for j in jobs],
            [j.msgid for j in jobs],
            [j.infno for j in jobs],
            [j.body_hash for j in jobs],
            [j.paasid for j in jobs],
            [j.inf_refmsgid for j in jobs],
            [j.infcode for j in jobs],
            [j.content_type for j in jobs],
            [j.answer for j in jobs],
        )
        flags = [row["ours"] for row in rows]
    outcomes: list[Outcome[Stored | None]] = []
    for job, ours in zip(jobs, flags, strict=True):
        if ours:
            outcomes.append(None)
            continue
        # A twin stored first (rare): its answer, read after its commit.
        row = await pool.fetchrow(_STORED, job.fixmedins_code, job.msgid)
        stored = None if row is None else _stored(row)
        outcomes.append(
            RuntimeError("a message's answer was neither stored nor found")
            if stored is None
            else stored
        )
    return outcomes


def _busy() -> ServiceUnavailable:
    return ServiceUnavailable(
        "too many gateway messages are waiting in this worker: send again in a moment",
        code="GATEWAY_QUEUE_FULL",
    )


def _admission_keys(job: Admission) -> tuple[Hashable, ...]:
    return ((job.paasid, job.nonce),)


def _store_keys(job: NewAnswer) -> tuple[Hashable, ...]:
    return ((job.fixmedins_code, job.msgid),)


class Messages:
    """A worker's two batchers; closed at shutdown (``Services.batchers``)."""

    def __init__(self, pool: Pool) -> None:
        async def admit_run(jobs: Sequence[Admission]) -> list[Outcome[Admitted]]:
            return await admit_batch(pool, jobs)

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
            return True, Stored(new.body_hash, new.content_type, new.answer)
        return False, twin
