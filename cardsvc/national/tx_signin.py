"""9001 sign-in and 9002 sign-out.

A sign-in gives the facility a ``sign_no`` that every other message must carry until it
signs out (9002) or the sign-in is 24 hours old. A 9001 run again under its msgid finds the
sign-in it made (the stored answer normally answers it before).
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Annotated, Any

import msgspec

from cardsvc.db import transaction as db_transaction
from cardsvc.errors import Unauthenticated
from cardsvc.national.envelope import SHANGHAI
from cardsvc.national.operator import operator
from cardsvc.national.registry import Call, node, transaction

SIGN_IN_TTL = dt.timedelta(hours=24)

Short = Annotated[str, msgspec.Meta(max_length=50)]


class SignIn(msgspec.Struct, kw_only=True):
    opter_no: Short
    mac: Short = ""
    ip: Short = ""


class SignOut(msgspec.Struct, kw_only=True):
    sign_no: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    opter_no: Short = ""


def sign_time(moment: dt.datetime) -> str:
    """``yyyy-MM-dd HH:mm:ss``, Asia/Shanghai."""
    return f"{moment.astimezone(SHANGHAI):%Y-%m-%d %H:%M:%S}"


_SIGN_IN = """
WITH new AS (
    INSERT INTO gateway_signins (sign_no, fixmedins_code, paasid, msgid, opter_no, mac, ip,
                                 signed_in_at, expires_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (fixmedins_code, msgid) DO NOTHING
    RETURNING sign_no, signed_in_at
)
SELECT sign_no, signed_in_at, true AS fresh FROM new
UNION ALL
SELECT sign_no, signed_in_at, false FROM gateway_signins WHERE fixmedins_code = $2 AND msgid = $4
LIMIT 1
"""

# The sign-out time (the first one, if it was signed out before) and whether it is this one.
_SIGN_OUT = """
WITH old AS (
    SELECT signed_out_at FROM gateway_signins
    WHERE sign_no = $1 AND fixmedins_code = $2 FOR UPDATE
)
UPDATE gateway_signins s SET signed_out_at = coalesce(old.signed_out_at, $3)
FROM old WHERE s.sign_no = $1
RETURNING s.signed_out_at, old.signed_out_at IS NULL AS first
"""

_SIGNED_IN_BY = (
    "SELECT sign_no, signed_in_at FROM gateway_signins WHERE fixmedins_code = $1 AND msgid = $2"
)


@transaction("9001", needs_sign_no=False)
async def sign_in(call: Call, inputs: dict[str, msgspec.Raw]) -> dict[str, Any]:
    req = node(inputs, "signIn", SignIn)
    args = (
        secrets.token_hex(12),
        call.fixmedins_code,
        call.paasid,
        call.msgid,
        req.opter_no,
        req.mac,
        req.ip,
        call.now,
        call.now + SIGN_IN_TTL,
    )
    async with db_transaction(call.pool) as conn:
        row = await conn.fetchrow(_SIGN_IN, *args)
        if row is not None and row["fresh"]:
            await call.services.audit.append(
                conn,
                actor=call.caller.actor,
                action="gateway.signed_in",
                object_type="facility",
                object_id=call.fixmedins_code,
                data={**operator(call), "opter_no": req.opter_no, "mac": req.mac, "ip": req.ip},
            )
    if row is None:  # a concurrent twin committed after this statement's snapshot
        row = await call.pool.fetchrow(_SIGNED_IN_BY, call.fixmedins_code, call.msgid)
    if row is None:
        raise RuntimeError("a sign-in was neither made nor found")
    return {"signinoutb": {"sign_time": sign_time(row["signed_in_at"]), "sign_no": row["sign_no"]}}


@transaction("9002")
async def sign_out(call: Call, inputs: dict[str, msgspec.Raw]) -> dict[str, Any]:
    req = node(inputs, "signOut", SignOut)
    async with db_transaction(call.pool) as conn:
        row = await conn.fetchrow(_SIGN_OUT, req.sign_no, call.fixmedins_code, call.now)
        if row is None:
            raise Unauthenticated("no such sign-in of this facility", code="SIGN_NO_INVALID")
        signed_out_at = row["signed_out_at"]
        if row["first"]:
            await call.services.audit.append(
                conn,
                actor=call.caller.actor,
                action="gateway.signed_out",
                object_type="facility",
                object_id=call.fixmedins_code,
                data={**operator(call), "opter_no": req.opter_no},
            )
    return {"signoutoutb": {"sign_time": sign_time(signed_out_at)}}
