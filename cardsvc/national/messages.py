"""Each message's admission and its stored answer: exactly once per (fixmedins_code, msgid).

``admit`` is one statement: it records the nonce (a nonce seen before is refused), reads
the client's and its facility's standing, whether ``sign_no`` is a live sign-in of the
facility, the answer stored for the msgid if any, and draws the message's ``inf_refmsgid``
sequence number. ``store`` keeps a handler's answer; when a concurrent retry stored one
first, that one is answered instead, so both get the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from cardsvc.db import Pool
from cardsvc.errors import Forbidden, Unauthenticated
from cardsvc.settlement.params import CURRENT_POLICY_VERSION, load_params

_ADMIT = """
WITH nonce AS (
    INSERT INTO gateway_nonces (paasid, nonce) VALUES ($1, $2)
    ON CONFLICT DO NOTHING RETURNING 1
)
SELECT (SELECT count(*) FROM nonce) > 0 AS fresh,
       c.status AS client_status, f.status AS facility_status, f.credit_rating,
       EXISTS (SELECT 1 FROM gateway_signins s
               WHERE s.sign_no = $3 AND s.fixmedins_code = c.fixmedins_code
                 AND s.signed_out_at IS NULL AND s.expires_at > now()) AS signed_in,
       m.body_hash, m.content_type, m.answer,
       nextval('gateway_refmsg_seq') AS sequence
FROM gateway_clients c JOIN facilities f USING (fixmedins_code)
LEFT JOIN gateway_messages m ON m.fixmedins_code = c.fixmedins_code AND m.msgid = $4
WHERE c.paasid = $1
"""

_STORE = """
WITH stored AS (
    INSERT INTO gateway_messages (fixmedins_code, msgid, infno, body_hash, paasid,
                                  inf_refmsgid, infcode, content_type, answer)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (fixmedins_code, msgid) DO NOTHING RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM stored) AS ours, m.body_hash, m.content_type, m.answer
FROM (SELECT) AS one
LEFT JOIN gateway_messages m ON m.fixmedins_code = $1 AND m.msgid = $2
"""


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


def _stored(row: asyncpg.Record) -> Stored | None:
    if row["body_hash"] is None:
        return None
    return Stored(bytes(row["body_hash"]), row["content_type"], bytes(row["answer"]))


async def admit(pool: Pool, *, paasid: str, nonce: str, sign_no: str, msgid: str) -> Admitted:
    """Records the nonce and reads the standing; refuses a replay, a disabled client and a
    suspended facility (each an authentication failure: HTTP 4xx)."""
    row = await pool.fetchrow(_ADMIT, paasid, nonce, sign_no, msgid)
    if row is None:  # deleted since its secret was cached: there is no deleting, but still
        raise Unauthenticated("no such gateway client", code="GATEWAY_CLIENT_UNKNOWN")
    if not row["fresh"]:
        raise Unauthenticated("x-tif-nonce was used before", code="NONCE_REPLAYED")
    if row["client_status"] != "active":
        raise Forbidden("the gateway client is disabled", code="GATEWAY_CLIENT_DISABLED")
    suspended = load_params(CURRENT_POLICY_VERSION).facility_ratings.suspended
    if row["facility_status"] != "active" or row["credit_rating"] in suspended:
        raise Forbidden("the client's facility is suspended", code="FACILITY_SUSPENDED")
    return Admitted(signed_in=row["signed_in"], sequence=row["sequence"], stored=_stored(row))


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


async def store(pool: Pool, new: NewAnswer) -> tuple[bool, Stored]:
    """Stores the answer: (True, it) — or (False, the answer a concurrent twin stored
    first)."""
    row = await pool.fetchrow(
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
    )
    if row["ours"]:
        return True, Stored(new.body_hash, new.content_type, new.answer)
    stored = _stored(row)
    if stored is None:
        # The twin committed while this statement waited on it, after its snapshot.
        again = await pool.fetchrow(
            "SELECT body_hash, content_type, answer FROM gateway_messages"
            " WHERE fixmedins_code = $1 AND msgid = $2",
            new.fixmedins_code,
            new.msgid,
        )
        stored = None if again is None else _stored(again)
    if stored is None:
        raise RuntimeError("a message's answer was neither stored nor found")
    return False, stored
