"""A settlement planned, pure: from a request and its snapshot to the rows to write and the
answer to give, with no database in sight. The pipeline (``pipeline``) reads the snapshots
of a batch, plans each settlement here and writes the batch (``store``).

A job carries the engine's request (``policy.SettlementRequest``), whoever asked: the native
API's ``SettleRequest`` becomes one with its integer fee lines (``policy_request``), the
national gateway's 2207/2304 with the visit's decimal lines (``cardsvc.national.settle``),
which also names each line's ``feedetl_sn`` (``line_refs``, kept in the settlement's
``lines``) and the operator (``opter``, in the audit entry). The native API's stored rows
and request hashes are the same as before either existed."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Final, Literal

import asyncpg
import msgspec

from cardsvc import clock
from cardsvc.settlement import policy
from cardsvc.settlement.flags import Flag, SupervisionRules, flags_for
from cardsvc.settlement.models import FundPayment, SetlInfo, SettleRequest
from cardsvc.settlement.params import PolicyParams
from cardsvc.settlement.postings import settlement_postings
from cardsvc.settlement.snapshot import YEAR_COLUMNS, SettleRead, StayKey
from cardsvc.settlement.store import LineVersion, SettlementWrite, bytea, lines_column
from cardsvc.web.caller import Admission, Caller

_request_encoder = msgspec.json.Encoder()
_json = msgspec.json.Encoder()
_setldetail = msgspec.json.Decoder(list[FundPayment])


@dataclass(frozen=True, slots=True)
class Opter:
    """The facility's operator who asked (the national interface's ``opter``/``opter_name``),
    recorded in the audit entry beside the caller."""

    opter: str
    opter_name: str


# The national gateway's Idempotency-Keys: "gw:" + the message's msgid. Its own key space:
# a key of POST /v1/settlements never starts with it (IDEMPOTENCY_KEY_RESERVED), so no
# terminal takes over, or reads back, a gateway message's settlement.
GATEWAY_KEY_PREFIX: Final = "gw:"


@dataclass
class SettleJob:
    """One settlement on its way through the pipeline (POST /v1/settlements or a gateway
    2207/2304)."""

    caller: Caller
    key: str  # Idempotency-Key (the gateway's: "gw:" + msgid)
    digest: bytes  # the request's hash: the same key with another request is refused
    request: policy.SettlementRequest  # what the engine settles
    mdtrt_id: str
    psn_no: str
    card_no: str
    spends: bytes  # the card token's use id (settlements.card_auth_id)
    admission: Admission | None  # the request's nonce, recorded with the write
    line_refs: tuple[str, ...] = ()  # the gateway's feedetl_sn of each line, in order
    # The gateway's visit lines as the handler read them (``store.LineVersion``, in the
    # order of ``line_refs``): the batch write marks them settled in the settlement's own
    # statement, only if none changed since.
    line_versions: tuple[LineVersion, ...] = ()
    opter: Opter | None = None
    stay: StayKey | None = None  # a part of an inpatient stay settled in parts

    @property
    def fixmedins_code(self) -> str:
        return self.caller.facility()


@dataclass(frozen=True)
class Planned:
    job: SettleJob
    write: SettlementWrite
    info: SetlInfo  # the answer, once written
    audited: dict[str, Any]  # what the batch's audit entry says of this settlement


def request_hash(req: SettleRequest, psn_no: str) -> bytes:
    """Same decoded request for the same person, same hash, whatever the JSON spacing or
    field order was.

    The person (``psn_no`` of the verified card token) is part of it: the same key and body
    with another person's card is another request. The card token itself is left out: a
    terminal that lost the answer may have authenticated the card again before it retries,
    and the retry must still find its settlement."""
    body = _request_encoder.encode(msgspec.structs.replace(req, card_token=""))
    return hashlib.sha256(psn_no.encode() + b"\n" + body).digest()


def new_setl_id(now: dt.datetime) -> str:
    """``S``, the business date, the microsecond of that day (10 hex digits) and 40 random
    bits (10 hex digits). A day's ids sort by time, so the indexes keyed by them (the
    settlement's, its lines', its ledger transaction's ref, its audit entry's object) grow at
    their right edge instead of touching a random page of a large index per settlement."""
    local = now.astimezone(clock.BUSINESS_TZ)
    of_day = local - local.replace(hour=0, minute=0, second=0, microsecond=0)
    micros = of_day // dt.timedelta(microseconds=1)
    return f"S{local:%Y%m%d}{micros:010x}{secrets.token_hex(5)}"


def policy_request(req: SettleRequest) -> policy.SettlementRequest:
    return policy.SettlementRequest(
        insutype=req.insutype,
        med_type=req.med_type,
        acct_used_flag=req.acct_used_flag,
        injury_case_id=req.injury_case_id,
        delivery_type=req.delivery_type,
        lines=tuple(
            policy.FeeLine(code=f.code, unit_price=f.unit_price, quantity=f.quantity)
            for f in req.feedetail
        ),
    )


def setl_info(
    *,
    setl_id: str | None,
    setl_time: dt.datetime,
    psn_no: str,
    card_no: str,
    fixmedins_code: str,
    request: policy.SettlementRequest,
    mdtrt_id: str,
    split: policy.Split,
    status: Literal["preview", "settled"],
) -> SetlInfo:
    return SetlInfo(
        setl_id=setl_id,
        setl_time=setl_time,
        psn_no=psn_no,
        card_no=card_no,
        fixmedins_code=fixmedins_code,
        insutype=request.insutype,
        med_type=request.med_type,
        mdtrt_id=mdtrt_id,
        policy_version=split.policy_version,
        setldetail=[
            FundPayment(fund_pay_type=f.fund_pay_type, fund_payamt=f.fund_payamt)
            for f in split.setldetail
        ],
        review_required=split.review_required,
        status=status,
        **{name: getattr(split, name) for name in policy.STEP3_AMOUNTS},
    )


def stored_setl_info(row: asyncpg.Record) -> SetlInfo:
    return SetlInfo(
        setl_id=row["setl_id"],
        setl_time=row["setl_time"],
        psn_no=row["psn_no"],
        card_no=row["card_no"],
        fixmedins_code=row["fixmedins_code"],
        insutype=row["insutype"],
        med_type=row["med_type"],
        mdtrt_id=row["mdtrt_id"],
        policy_version=row["policy_version"],
        setldetail=_setldetail.decode(row["setldetail"]),
        review_required=row["review_status"] != "none",
        status=row["status"],
        **{name: row[name] for name in policy.STEP3_AMOUNTS},
    )


def item_codes(request: policy.SettlementRequest) -> list[str]:
    return sorted({line.code for line in request.lines})


def year_args(delta: policy.YearState) -> list[int]:
    return [getattr(delta, c) for c in YEAR_COLUMNS]


def plan(
    params: PolicyParams,
    rules: SupervisionRules,
    job: SettleJob,
    read: SettleRead,
    now: dt.datetime,
) -> Planned:
    """The settlement of ``job`` on ``read``'s snapshot; a refusal raises its CardsvcError."""
    snapshot, request = read.snapshot, job.request
    split = policy.settle(params, snapshot, request)
    setl_id = new_setl_id(now)
    today = clock.business_date(now)
    flags: list[Flag] = flags_for(
        rules,
        at_pharmacy=snapshot.facility.type == "pharmacy",
        medfee_sumamt=split.medfee_sumamt,
        recent=read.recent,
    )
    row = {
        "setl_id": setl_id,
        "psn_no": snapshot.psn_no,
        "card_no": job.card_no,
        "fixmedins_code": snapshot.facility.fixmedins_code,
        "fixmedins_type": snapshot.facility.type,
        # A gateway client has no terminal: its settlements name the client (gateway:<paasid>).
        "terminal_id": job.caller.terminal_id or job.caller.actor,
        "idempotency_key": job.key,
        "request_hash": bytea(job.digest),
        "insutype": request.insutype,
        "med_type": request.med_type,
        "mdtrt_id": job.mdtrt_id,
        "injury_case_id": request.injury_case_id,
        "delivery_type": request.delivery_type,
        "acct_used_flag": request.acct_used_flag,
        "policy_version": split.policy_version,
        "setl_time": now,
        "setl_date": today,
        **{name: getattr(split, name) for name in policy.STEP3_AMOUNTS},
        "setldetail": [
            {"fund_pay_type": f.fund_pay_type, "fund_payamt": f.fund_payamt}
            for f in split.setldetail
        ],
        "year_delta": msgspec.to_builtins(split.year_delta),
        "review_status": "pending" if split.review_required else "none",
        "card_auth_id": bytea(job.spends),  # spends the card token (a unique index)
        "lines": lines_column(split, request.lines, job.line_refs),
    }
    admission = job.admission
    write = SettlementWrite(
        row=row,
        postings=settlement_postings(job.psn_no, snapshot.facility.fixmedins_code, split),
        acct_pay=split.acct_pay,
        account_version=read.account_version,
        year=today.year,
        year_delta=year_args(split.year_delta),
        flags=flags,
        nonce=None if admission is None else (admission.terminal_id, admission.nonce),
        visit_lines=job.line_versions,
    )
    info = setl_info(
        setl_id=setl_id,
        setl_time=now,
        psn_no=job.psn_no,
        card_no=job.card_no,
        fixmedins_code=snapshot.facility.fixmedins_code,
        request=request,
        mdtrt_id=job.mdtrt_id,
        split=split,
        status="settled",
    )
    audited = {
        "setl_id": setl_id,
        "actor": job.caller.actor,
        "psn_no": job.psn_no,
        "fixmedins_code": snapshot.facility.fixmedins_code,
        "medfee_sumamt": split.medfee_sumamt,
        "fund_pay_sumamt": split.fund_pay_sumamt,
        "acct_pay": split.acct_pay,
        "psn_cash_pay": split.psn_cash_pay,
        "card_no": job.card_no,
        "setldetail": row["setldetail"],
        "review_required": split.review_required,
    }
    if job.opter is not None:
        audited["opter"] = job.opter.opter
        audited["opter_name"] = job.opter.opter_name
    return Planned(job, write, info, audited)
