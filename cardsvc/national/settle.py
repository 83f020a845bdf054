"""Settling a visit's uploaded lines through the settlement pipeline (2206/2207, 2303/2304).

A gateway settlement is a ``SettleJob`` like a POST /v1/settlements: the same engine,
ledger, supervision flags and review holds, audit entry (which names the gateway client as
actor and the message's ``opter``/``opter_name``), token spending (one settlement per
``transaction`` card token) and idempotency: its Idempotency-Key is ``"gw:" + msgid``,
unique per facility, so a message run twice (a crash before its answer was stored, two
retries at once) settles once and answers the same.

**Never a line settled twice.** The handler reads the visit's unsettled lines with their
versions (no lock, no transaction of its own: one round trip with the opening read,
``visits.open_settlement``) and submits the job; the pipeline's batch write marks those lines
with the settlement's ``setl_id`` in the settlement's own statement, only if each is still
the version read, active and unsettled, and held by no other transaction
(``store.settlement_statement``). Otherwise nothing of that settlement is written and the
message is refused with ``VISIT_SETTLING`` (retryable, not stored): two messages for one
visit at once settle it once, and the other's retry sees the lines settled
(``NO_UNSETTLED_LINES``). Changing a visit's lines (2202, 2205/2302, a 2301 refund, 2601)
holds them first (``visits.lock_lines``): it waits for a settlement being written, and one
written meanwhile is refused. Any reversal of a settlement releases its lines
(``reverse_locked`` calls ``visits.release``).

**A 2601 and its message.** The message's opening read (the SQL function
``gateway_message_open``) takes the message's advisory lock, then reads whether a 2601
undid it; a 2601 holds that lock while it looks for the message's settlement and records
the undoing, and refuses (``VISIT_SETTLING``) while the message is in progress (its msgid
reserved without an answer, ``reversals``). So either the 2601 came first and the message
does nothing (``MSGID_UNDONE``), or the message came first and the 2601 waits for its
answer, then reverses its settlement.

Cancelling a settlement and undoing a message (2601, which a late settlement message of
the msgid it names meets as ``MSGID_UNDONE``): ``cardsvc.national.reversals``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

import asyncpg
import msgspec
import structlog

from cardsvc import clock
from cardsvc.cardauth.services import token_use_id
from cardsvc.db import Connection, transaction
from cardsvc.errors import Conflict, InvalidRequest, ServiceUnavailable
from cardsvc.national import visits
from cardsvc.national.certs import Certified
from cardsvc.national.operator import operator
from cardsvc.national.registry import Call
from cardsvc.national.units import yuan
from cardsvc.national.visit_services import with_injury_case
from cardsvc.settlement import policy
from cardsvc.settlement.models import MAX_SETTLEMENT_LINES, SetlInfo
from cardsvc.settlement.plan import GATEWAY_KEY_PREFIX, Opter, SettleJob, stored_setl_info
from cardsvc.settlement.snapshot import StayKey

log = structlog.get_logger(__name__)

KEY_PREFIX: Final = GATEWAY_KEY_PREFIX  # a gateway settlement's Idempotency-Key: + its msgid
SETTLING_INFNOS: Final = frozenset({"2207", "2304"})

_digest_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Order:
    """What a 2206/2207/2303/2304 asks to settle (amounts in fen)."""

    psn_no: str
    mdtrt_id: str
    insutype: str
    med_type: str | None  # None: the visit's (2303/2304 name none)
    medfee_sumamt: int
    chrg_bchno: str | None  # None or "0000": every unsettled line
    acct_used_flag: bool
    inpatient: bool
    mid_setl_flag: bool = False  # 2303/2304: a settlement during the stay


@dataclass(frozen=True, slots=True)
class Settled:
    """A settlement's answer with what the gateway's output adds to cardsvc's."""

    info: SetlInfo
    psn_type: str
    msgid: str  # the settling message (medins_setl_id); for a preview, the 2206/2303's


# --- refusals --------------------------------------------------------------------------


def mismatch(message: str, code: str = "VISIT_MISMATCH") -> Conflict:
    """The codes the visit transactions use where they apply (VISIT_PERSON_MISMATCH,
    VISIT_KIND_MISMATCH); VISIT_MISMATCH for a scheme, visit type or settlement that is not
    the visit's."""
    return Conflict(message, code=code)


def msgid_undone(msgid: str, undone_by: str) -> Conflict:
    """A message that arrives after a 2601 named it: it does nothing."""
    return Conflict(
        f"message {msgid} was undone by 2601 (msgid {undone_by}) before it arrived: send it"
        " again as a new message, under a new msgid",
        code="MSGID_UNDONE",
    )


def message_in_progress(msgid: str) -> ServiceUnavailable:
    """A 2601 of a settlement message that is being processed (or was, a moment ago,
    without an answer): its settlement may be committing."""
    return ServiceUnavailable(
        f"message {msgid} is being settled: send the 2601 again in a moment",
        code="VISIT_SETTLING",
    )


# --- the order against the visit -------------------------------------------------------


def check_visit(visit: visits.Visit, order: Order, cert: Certified) -> None:
    """The order must be of the visit's person, insutype, med_type and kind, on a visit
    that can be settled now (a final inpatient settlement after discharge, a mid-stay one
    before it)."""
    cert.require_person(order.psn_no)
    if visit.psn_no != cert.psn_no:
        raise mismatch(f"visit {visit.mdtrt_id} is another person's", "VISIT_PERSON_MISMATCH")
    if visit.status == "cancelled":
        raise Conflict(f"visit {visit.mdtrt_id} was cancelled", code="VISIT_CLOSED")
    if order.inpatient != (visit.kind == "inpatient"):
        raise mismatch(
            f"visit {visit.mdtrt_id} is {visit.kind}: settle it with "
            + ("2303/2304" if visit.kind == "inpatient" else "2206/2207"),
            "VISIT_KIND_MISMATCH",
        )
    if order.insutype != visit.insutype:
        raise mismatch(f"visit {visit.mdtrt_id} is of insutype {visit.insutype}")
    if order.med_type is not None and order.med_type != visit.med_type:
        raise mismatch(f"visit {visit.mdtrt_id} is of med_type {visit.med_type}")
    if order.inpatient and order.mid_setl_flag and visit.status != "open":
        raise Conflict(
            f"the stay {visit.mdtrt_id} is discharged: settle it with mid_setl_flag 0",
            code="VISIT_DISCHARGED",
        )
    if order.inpatient and not order.mid_setl_flag and visit.status != "discharged":
        raise Conflict(
            f"the stay {visit.mdtrt_id} is not discharged (2402): a final settlement follows"
            " the discharge; during the stay use mid_setl_flag 1",
            code="VISIT_NOT_DISCHARGED",
        )


def engine_request(
    visit: visits.Visit, order: Order, lines: list[visits.VisitLine]
) -> policy.SettlementRequest:
    """The engine's request for ``lines``; ``medfee_sumamt`` must be their sum."""
    if not lines:
        raise Conflict(
            f"visit {visit.mdtrt_id} has no unsettled fee lines"
            + ("" if order.chrg_bchno in (None, visits.ALL_BATCHES) else " in this chrg_bchno"),
            code="NO_UNSETTLED_LINES",
        )
    if len(lines) > MAX_SETTLEMENT_LINES:
        raise Conflict(
            f"visit {visit.mdtrt_id} has {len(lines)} unsettled fee lines"
            + ("" if order.chrg_bchno in (None, visits.ALL_BATCHES) else " in this chrg_bchno")
            + f"; a settlement takes at most {MAX_SETTLEMENT_LINES}: settle the visit by"
            " charge batch (chrg_bchno), one settlement per batch of at most"
            f" {MAX_SETTLEMENT_LINES} lines",
            code="TOO_MANY_LINES",
            details={"lines": len(lines), "max_lines": MAX_SETTLEMENT_LINES},
        )
    total = sum(line.total for line in lines)
    if total != order.medfee_sumamt:
        raise InvalidRequest(
            f"medfee_sumamt {yuan(order.medfee_sumamt)} is not the sum of the visit's"
            f" {len(lines)} unsettled lines, {yuan(total)}",
            code="FEE_SUM_MISMATCH",
            details={"medfee_sumamt_fen": order.medfee_sumamt, "lines_sum_fen": total},
        )
    return policy.SettlementRequest(
        insutype=visit.insutype,
        med_type=visit.med_type,
        acct_used_flag=order.acct_used_flag,
        injury_case_id=visit.injury_case_id,
        delivery_type=visit.delivery_type,
        lines=tuple(
            policy.DecimalLine(
                code=line.code, price_e4=line.price_e4, count_e4=line.count_e4, total=line.total
            )
            for line in lines
        ),
    )


def stay_key(order: Order) -> StayKey | None:
    """A stay's settlements (2303/2304) are the parts of one admission: each is settled
    knowing what the stay's earlier gateway settlements took (its deductible is taken
    once, the policy's reading 18). An outpatient visit's settlements are each their own."""
    return StayKey(order.mdtrt_id, KEY_PREFIX) if order.inpatient else None


def request_digest(
    psn_no: str, mdtrt_id: str, refs: tuple[str, ...], request: policy.SettlementRequest
) -> bytes:
    """The gateway settlement's request hash: the person, the visit and exactly the lines
    it settles (a rerun that would settle other lines is another request)."""
    body = _digest_encoder.encode({"mdtrt_id": mdtrt_id, "refs": refs, "request": request})
    return hashlib.sha256(b"gw\n" + psn_no.encode() + b"\n" + body).digest()


# --- pre-settlement --------------------------------------------------------------------


async def preview(call: Call, order: Order, cert: Certified) -> Settled:
    """The settlement of the visit's unsettled lines as it would be now; writes nothing."""
    fac = call.fixmedins_code
    async with call.pool.acquire() as conn:
        visit = await visits.load_visit(conn, fac, order.mdtrt_id)
        check_visit(visit, order, cert)
        visit = await with_injury_case(conn, visit, clock.business_date(call.now))
        lines = await visits.unsettled_lines(conn, fac, order.mdtrt_id, order.chrg_bchno)
        request = engine_request(visit, order, lines)
        card_no = cert.card_no or await _active_card(conn, cert.psn_no)
        psn_type = await psn_type_of(conn, cert.psn_no)
    info = await call.services.settlements.preview_request(
        fac, cert.psn_no, card_no, request, order.mdtrt_id, stay_key(order)
    )
    async with transaction(call.pool) as conn:  # it reveals the person's figures: audited
        await call.services.audit.append(
            conn,
            actor=call.caller.actor,
            action="settlement.previewed",
            object_type="visit",
            object_id=f"{fac}/{order.mdtrt_id}",
            data={
                "psn_no": cert.psn_no,
                "mdtrt_cert_type": "03" if cert.claims is not None else "02",
                "medfee_sumamt": order.medfee_sumamt,
                "lines": len(lines),
                **operator(call),
            },
        )
    return Settled(info, psn_type, call.msgid)


async def _active_card(conn: Connection, psn_no: str) -> str:
    """For a preview by identity number (02): the person's active card, if any (the policy
    refuses a settlement without one, and says so)."""
    card_no: str | None = await conn.fetchval(
        "SELECT card_no FROM cards WHERE psn_no = $1 ORDER BY status = 'active' DESC LIMIT 1",
        psn_no,
    )
    return card_no or ""


async def psn_type_of(conn: Connection, psn_no: str) -> str:
    psn_type: str | None = await conn.fetchval(
        "SELECT psn_type FROM persons WHERE psn_no = $1", psn_no
    )
    return psn_type or ""


# --- settlement ------------------------------------------------------------------------


async def settle(call: Call, order: Order, cert: Certified) -> Settled:
    """Settles the visit's unsettled lines (see the module's docstring)."""
    if cert.claims is None or cert.card_no is None:  # certs.resolve(settling=True) saw to it
        raise RuntimeError("a settlement needs a card token")
    fac, msgid = call.fixmedins_code, call.msgid
    key = KEY_PREFIX + msgid
    async with call.pool.acquire() as conn:
        opened = await visits.open_settlement(
            conn, fac, order.mdtrt_id, order.chrg_bchno, msgid=msgid, key=key, psn_no=cert.psn_no
        )
        if opened.undone_by is not None:
            raise msgid_undone(msgid, opened.undone_by)
        psn_type = opened.psn_type or ""
        if opened.setl_id is not None:  # this message settled before (its answer was lost)
            stored = await settlement_of(conn, fac, key)
            if stored is not None:
                return Settled(stored_setl_info(stored), psn_type, msgid)
        if opened.visit is None:
            raise visits.visit_not_found(order.mdtrt_id)
        check_visit(opened.visit, order, cert)
        visit = await with_injury_case(conn, opened.visit, clock.business_date(call.now))
        lines, versions = opened.lines, opened.versions
    request = engine_request(visit, order, lines)
    refs = tuple(line.feedetl_sn for line in lines)
    job = SettleJob(
        caller=call.caller,
        key=key,
        digest=request_digest(cert.psn_no, order.mdtrt_id, refs, request),
        request=request,
        mdtrt_id=order.mdtrt_id,
        psn_no=cert.psn_no,
        card_no=cert.card_no,
        spends=token_use_id(cert.claims),
        admission=None,  # the gateway admitted the message (its TIF nonce) itself
        line_refs=refs,
        line_versions=versions,
        opter=Opter(call.opter, call.opter_name),
        stay=stay_key(order),
    )
    info = await call.services.settlements.submit(job)
    return Settled(info, psn_type, msgid)


async def settlement_of(conn: Connection, fac: str, key: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM settlements WHERE fixmedins_code = $1 AND idempotency_key = $2", fac, key
    )
    return row


async def lock_message(conn: Connection, fac: str, msgid: str) -> None:
    """Serialises a 2601 (held until its transaction ends) with the message it names
    (``gateway_message_open`` takes the same lock)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('gateway-msg|' || $1 || '|' || $2, 0))",
        fac,
        msgid,
    )
