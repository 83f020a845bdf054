"""Settling a visit's uploaded lines through the settlement pipeline (2206/2207, 2303/2304).

A gateway settlement is a ``SettleJob`` like a POST /v1/settlements: the same engine,
ledger, supervision flags and review holds, audit entry (which names the gateway client as
actor and the message's ``opter``/``opter_name``), token spending (one settlement per
``transaction`` card token) and idempotency: its Idempotency-Key is ``"gw:" + msgid``,
unique per facility, so a message run twice (a crash before its answer was stored, two
retries at once) settles once and answers the same.

**Never a line settled twice.** The lines a settlement takes are the visit's unsettled
lines; they are marked with its ``setl_id`` only after its commit (the pipeline writes the
settlement, not the visit). Between the two the visit is *claimed* by the message
(``visits.claim``: ``settling_msgid``, ``settling_since``), committed before the job is
submitted:

1. Under a per-message advisory lock and the visit's row lock, the claim step refuses a
   message a 2601 undid, and looks for the settlement of this message
   (a rerun: its lines are marked and its answer returned) and for another message's claim.
   A claim whose settlement exists is completed (its lines marked, the claim ended) — the
   settlement's own ``lines`` column names each line's ``feedetl_sn``, so the link between
   a settlement and its lines survives a process dying between commit and marking. A claim
   older than ``visits.SETTLING_CLAIM_TTL`` without a settlement is abandoned. A live claim
   refuses the message with ``VISIT_SETTLING`` (retryable: not stored as its answer).
2. The unsettled lines are read, checked (``medfee_sumamt`` their sum), and claimed.
3. The job goes through the pipeline; a refusal ends the claim.
4. The lines are marked and the claim ended, in one transaction.

The claim and the marking commit without waiting for their WAL flush (``_no_flush_wait``
says why that is safe); the settlement's own commit is the pipeline's, as ever. Every
writer of a visit takes the visit's row before its lines (deadlock-free), and any reversal
of a settlement releases its lines (``reverse_locked`` calls ``visits.release``).

Two messages for one visit therefore serialise on the claim: exactly one settles, the other
is told to retry, and its retry sees the lines already settled. Changing the lines of a
claimed visit (2205/2302/2601) waits for the claim too (``visits.check_not_settling``).

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
from cardsvc.cardauth.tokens import CardTokenClaims
from cardsvc.db import Connection, transaction
from cardsvc.errors import CardsvcError, Conflict, InvalidRequest, ServiceUnavailable
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


class _StoredLine(msgspec.Struct):
    feedetl_sn: str | None = None


_stored_lines = msgspec.json.Decoder(list[_StoredLine])


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


def visit_settling(mdtrt_id: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"visit {mdtrt_id} is being settled by another message: retry in a moment",
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


@dataclass(frozen=True, slots=True)
class _Claimed:
    job: SettleJob
    psn_type: str


async def settle(call: Call, order: Order, cert: Certified) -> Settled:
    """Settles the visit's unsettled lines (see the module's docstring for the claim)."""
    if cert.claims is None or cert.card_no is None:  # certs.resolve(settling=True) saw to it
        raise RuntimeError("a settlement needs a card token")
    fac, msgid = call.fixmedins_code, call.msgid
    card = _Card(cert.card_no, cert.claims)
    async with transaction(call.pool) as conn:
        await _no_flush_wait(conn)
        claimed = await _claim(conn, call, order, cert, card)
    if claimed is _COMPLETED:  # committed another message's marking: now this one's turn
        async with transaction(call.pool) as conn:
            await _no_flush_wait(conn)
            claimed = await _claim(conn, call, order, cert, card)
    if isinstance(claimed, Settled):
        return claimed
    if isinstance(claimed, _Completed):  # yet another message settled it meanwhile
        raise visit_settling(order.mdtrt_id)
    job = claimed.job
    try:
        info = await call.services.settlements.submit(job)
    except ServiceUnavailable as exc:
        if exc.code == "SETTLEMENT_QUEUE_FULL":  # refused before it was queued: not written
            async with transaction(call.pool) as conn:
                await visits.end_claim(conn, fac, order.mdtrt_id, msgid)
        raise  # else maybe written, maybe not: the claim stays for the retry (or expires)
    except CardsvcError:
        async with transaction(call.pool) as conn:
            stored = await settlement_of(conn, fac, job.key)
            if stored is not None:  # settled meanwhile under this message (a concurrent rerun)
                return await _finish(conn, stored, msgid, claimed.psn_type)
            await visits.end_claim(conn, fac, order.mdtrt_id, msgid)
        raise
    async with transaction(call.pool) as conn:
        await _no_flush_wait(conn)
        await _mark(conn, fac, order.mdtrt_id, job.line_refs, info.setl_id or "", msgid)
    return Settled(info, claimed.psn_type, msgid)


async def _no_flush_wait(conn: Connection) -> None:
    """The claim and the marking commit without waiting for their WAL to reach the disk:
    what depends on them is safe either way. The WAL is written in order, so once the
    settlement's own (synchronous) commit is durable the claim before it is too; a claim
    lost in a crash had no settlement (nothing to protect), and a marking lost in a crash
    is completed from its settlement by the next message for the visit, as if the process
    had died before it."""
    await conn.execute("SET LOCAL synchronous_commit = off")


_CLAIM_READ = """
SELECT (SELECT undone_by FROM gateway_undone_messages
        WHERE fixmedins_code = $1 AND msgid = $2) AS undone_by,
       (SELECT psn_type FROM persons WHERE psn_no = $4) AS psn_type,
       s.*
FROM (SELECT 1) AS one
LEFT JOIN settlements s ON s.fixmedins_code = $1 AND s.idempotency_key = $3
"""


class _Completed:
    """The claim step completed another message's claim: run it again (see ``settle``)."""


_COMPLETED: Final = _Completed()


@dataclass(frozen=True, slots=True)
class _Card:
    card_no: str
    claims: CardTokenClaims


async def _claim(
    conn: Connection, call: Call, order: Order, cert: Certified, card: _Card
) -> _Claimed | Settled | _Completed:
    fac, msgid, now = call.fixmedins_code, call.msgid, clock.now()
    key = KEY_PREFIX + msgid
    await lock_message(conn, fac, msgid)
    # After the lock (a statement reads what was committed when it began): whether a 2601
    # undid this message, the person's type, and this message's settlement, in one read.
    read = await conn.fetchrow(_CLAIM_READ, fac, msgid, key, cert.psn_no)
    if read["undone_by"] is not None:
        raise msgid_undone(msgid, read["undone_by"])
    psn_type = read["psn_type"] or ""
    visit = await visits.load_visit(conn, fac, order.mdtrt_id, lock=True)
    if read["setl_id"] is not None:  # this message settled before (its answer was lost)
        return await _finish(conn, read, msgid, psn_type)
    if await complete_claim(conn, visit, msgid):
        return _COMPLETED  # committed whatever this message's fate
    check_visit(visit, order, cert)
    visit = await with_injury_case(conn, visit, clock.business_date(call.now))
    lines = await visits.unsettled_lines(conn, fac, order.mdtrt_id, order.chrg_bchno)
    request = engine_request(visit, order, lines)
    if not await visits.claim(conn, fac, order.mdtrt_id, msgid, now):
        raise visit_settling(order.mdtrt_id)
    refs = tuple(line.feedetl_sn for line in lines)
    job = SettleJob(
        caller=call.caller,
        key=key,
        digest=request_digest(cert.psn_no, order.mdtrt_id, refs, request),
        request=request,
        mdtrt_id=order.mdtrt_id,
        psn_no=cert.psn_no,
        card_no=card.card_no,
        spends=token_use_id(card.claims),
        admission=None,  # the gateway admitted the message (its TIF nonce) itself
        line_refs=refs,
        opter=Opter(call.opter, call.opter_name),
        stay=stay_key(order),
    )
    return _Claimed(job, psn_type)


async def complete_claim(conn: Connection, visit: visits.Visit, msgid: str = "") -> bool:
    """A claim on ``visit`` (held ``FOR UPDATE`` by the caller) by another message than
    ``msgid`` whose settlement exists — its process stopped between the settlement's commit
    and the marking: its lines are marked and the claim ended (True). Anything that would
    change the visit's lines after finding a claim past its TTL calls this first, so that it
    never treats a settled line as unsettled. A claim without a settlement is left to
    ``visits.claim``, which takes over one past its TTL and refuses a live one."""
    other = visit.settling_msgid
    if other is None or other == msgid:
        return False
    stored = await settlement_of(conn, visit.fixmedins_code, KEY_PREFIX + other)
    if stored is None:
        return False
    await _finish(conn, stored, other, "")
    log.info("gateway_claim_completed", mdtrt_id=visit.mdtrt_id, setl_id=stored["setl_id"])
    return True


async def _finish(conn: Connection, stored: asyncpg.Record, msgid: str, psn_type: str) -> Settled:
    """The settlement stored under message ``msgid``: its lines marked (unless it was
    reversed since: its lines are free again), the message's claim ended, its answer."""
    fac, mdtrt_id = stored["fixmedins_code"], stored["mdtrt_id"]
    refs = tuple(
        line.feedetl_sn for line in _stored_lines.decode(stored["lines"]) if line.feedetl_sn
    )
    await _mark(conn, fac, mdtrt_id, refs, stored["setl_id"], msgid)
    return Settled(stored_setl_info(stored), psn_type, msgid)


async def _mark(
    conn: Connection, fac: str, mdtrt_id: str, refs: tuple[str, ...], setl_id: str, msgid: str
) -> None:
    # The visit's row first, then its lines: the order every writer of a visit takes (a
    # claim step holds the visit's row while it may complete another's marking).
    await visits.load_visit(conn, fac, mdtrt_id, lock=True)
    await visits.end_claim(conn, fac, mdtrt_id, msgid)
    # Reversed meanwhile (by the administrator, a rejected review)? Its lines are free: a
    # reversal holds the settlement's row while it releases them, so this waits for it.
    status = await conn.fetchval(
        "SELECT status FROM settlements WHERE setl_id = $1 FOR SHARE", setl_id
    )
    if status != "settled":
        return
    marked = await visits.mark_settled(conn, fac, mdtrt_id, refs, setl_id)
    if marked != len(refs):
        # Only lines already marked by this very settlement (a completion run twice) are
        # expected here; anything else would mean the claim was broken.
        already = await conn.fetchval(
            "SELECT count(*) FROM gateway_visit_lines WHERE fixmedins_code = $1"
            " AND mdtrt_id = $2 AND feedetl_sn = ANY($3::text[]) AND setl_id = $4",
            fac,
            mdtrt_id,
            list(refs),
            setl_id,
        )
        if already != len(refs):
            log.error(
                "gateway_lines_not_marked",
                setl_id=setl_id,
                mdtrt_id=mdtrt_id,
                lines=len(refs),
                marked=already,
            )


async def settlement_of(conn: Connection, fac: str, key: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM settlements WHERE fixmedins_code = $1 AND idempotency_key = $2", fac, key
    )
    return row


async def lock_message(conn: Connection, fac: str, msgid: str) -> None:
    """Serialises a settlement message's claim step with a 2601 naming it."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('gateway-msg|' || $1 || '|' || $2, 0))",
        fac,
        msgid,
    )
