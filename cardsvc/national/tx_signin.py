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
import structlog

from cardsvc.errors import Unauthenticated
from cardsvc.national.envelope import SHANGHAI
from cardsvc.national.registry import Call, node, transaction

log = structlog.get_logger(__name__)

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
SELECT sign_no, signed_in_at FROM new
UNION ALL
SELECT sign_no, signed_in_at FROM gateway_signins WHERE fixmedins_code = $2 AND msgid = $4
LIMIT 1
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
    row = await call.pool.fetchrow(_SIGN_IN, *args)
    if row is None:  # a concurrent twin committed after this statement's snapshot
        row = await call.pool.fetchrow(_SIGNED_IN_BY, call.fixmedins_code, call.msgid)
    assert row is not None
    log.info("gateway_signed_in", paasid=call.paasid, fixmedins_code=call.fixmedins_code)
    return {"signinoutb": {"sign_time": sign_time(row["signed_in_at"]), "sign_no": row["sign_no"]}}


@transaction("9002")
async def sign_out(call: Call, inputs: dict[str, msgspec.Raw]) -> dict[str, Any]:
    req = node(inputs, "signOut", SignOut)
    signed_out_at = await call.pool.fetchval(
        "UPDATE gateway_signins SET signed_out_at = coalesce(signed_out_at, $3)"
        " WHERE sign_no = $1 AND fixmedins_code = $2 RETURNING signed_out_at",
        req.sign_no,
        call.fixmedins_code,
        call.now,
    )
    if signed_out_at is None:
        raise Unauthenticated("no such sign-in of this facility", code="SIGN_NO_INVALID")
    return {"signoutoutb": {"sign_time": sign_time(signed_out_at)}}
