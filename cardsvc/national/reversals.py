"""Cancelling a gateway settlement (2208/2305) and undoing a message (2601).

A cancellation is cardsvc's own reversal (``reverse_locked``: the account, the year's
totals, the ledger, a pending review withdrawn), which also releases the settlement's
visit lines; the visit's row is taken first, as every writer of a visit takes it.

**2601 for a message that has not arrived** is recorded (``gateway_undone_messages``): a
message of a kind 2601 undoes (2201, 2204, 2207, 2301, 2304, 2401) arriving later with that
msgid is refused (``MSGID_UNDONE``) and does nothing, so an HIS that gave up on a message
and undid it is never charged, registered or billed by its late copy. The record and the
late message's check (the settlement's opening read, ``refuse_undone`` for the others) take
the same per-message advisory lock, so one of them sees the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from cardsvc.db import Connection, transaction
from cardsvc.errors import InvalidRequest, NotFound
from cardsvc.national import visits
from cardsvc.national.registry import Call
from cardsvc.national.settle import (
    KEY_PREFIX,
    SETTLING_INFNOS,
    lock_message,
    message_in_progress,
    mismatch,
    msgid_undone,
    psn_type_of,
    settlement_of,
)
from cardsvc.settlement.models import Reversal, SetlInfo
from cardsvc.settlement.plan import stored_setl_info
from cardsvc.settlement.services import reverse_locked

REGISTERING_INFNOS: Final = frozenset({"2201", "2401"})
UPLOADING_INFNOS: Final = frozenset({"2204", "2301"})
# A settlement message's reservation released or lapsed less than this ago (seconds) still
# holds off a 2601 of it: a try that timed out may have left its settlement in a batch in
# flight, well within this.
IN_PROGRESS_GRACE_S: Final = 120.0


# --- cancelling a settlement -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cancelled:
    """A reversal with the settlement it gave back."""

    reversal: Reversal
    settlement: SetlInfo
    psn_type: str


async def cancel(
    call: Call, setl_id: str, *, mdtrt_id: str | None, psn_no: str | None, inpatient: bool
) -> Cancelled:
    """2208/2305: the settlement reversed (``SettlementService``'s reversal) and its lines
    unsettled again, in one transaction; a second cancel answers the first reversal."""
    async with transaction(call.pool) as conn:
        row = await conn.fetchrow(
            "SELECT psn_no, fixmedins_code, mdtrt_id, med_type FROM settlements WHERE setl_id = $1",
            setl_id,
        )
        if row is None or row["fixmedins_code"] != call.fixmedins_code:
            raise NotFound(f"no settlement {setl_id} at this facility", code="SETTLEMENT_NOT_FOUND")
        if mdtrt_id is not None and row["mdtrt_id"] != mdtrt_id:
            raise mismatch(f"settlement {setl_id} is not of visit {mdtrt_id}")
        if psn_no is not None and row["psn_no"] != psn_no:
            raise mismatch(f"settlement {setl_id} is not of person {psn_no}")
        visit = await visits.find_visit(conn, call.fixmedins_code, row["mdtrt_id"])
        if visit is not None and inpatient != (visit.kind == "inpatient"):
            raise mismatch(
                f"settlement {setl_id} is of {visit.kind} visit {visit.mdtrt_id}: cancel it"
                f" with {'2305' if visit.kind == 'inpatient' else '2208'}",
                "VISIT_KIND_MISMATCH",
            )
        return await _reverse(conn, call, setl_id, row["psn_no"], row["mdtrt_id"])


async def _reverse(
    conn: Connection, call: Call, setl_id: str, psn_no: str, mdtrt_id: str
) -> Cancelled:
    # The visit's row before anything else (as the claim step and the marking take it):
    # held while the reversal gives the money back and the lines are released.
    await visits.find_visit(conn, call.fixmedins_code, mdtrt_id)
    reason = f"national {call.infno} msgid {call.msgid}, opter {call.opter} {call.opter_name}"
    # The reversal releases the settlement's lines (``visits.release``), whoever reverses.
    reversal = await reverse_locked(
        conn, call.services.audit, call.caller, setl_id, psn_no, reason.strip()
    )
    stored = await conn.fetchrow("SELECT * FROM settlements WHERE setl_id = $1", setl_id)
    return Cancelled(reversal, stored_setl_info(stored), await psn_type_of(conn, psn_no))


# --- undoing a message -----------------------------------------------------------------

Outcome = Literal["reversed", "cancelled", "none"]


@dataclass(frozen=True, slots=True)
class Undone:
    outcome: Outcome
    cancelled: Cancelled | None = None


async def undo(call: Call, omsgid: str, oinfno: str, psn_no: str | None) -> Undone:
    """2601: what message ``omsgid`` of this facility did, undone; idempotent. A message
    that did nothing (or never arrived) answers ``none`` and is recorded, so that a late
    settlement message with that msgid is refused."""
    if oinfno not in SETTLING_INFNOS | REGISTERING_INFNOS | UPLOADING_INFNOS:
        raise InvalidRequest(
            f"oinfno {oinfno} cannot be undone by 2601: only 2201, 2204, 2207, 2301, 2304"
            " and 2401 can",
            code="UNSUPPORTED_INFNO",
        )
    fac = call.fixmedins_code
    async with transaction(call.pool) as conn:
        await lock_message(conn, fac, omsgid)
        undone: Undone
        if oinfno in SETTLING_INFNOS:
            undone = await _undosettlement_of(conn, call, omsgid, psn_no)
        else:
            did = await visits.undo_message(conn, fac, omsgid, call.msgid)
            undone = Undone("cancelled" if did else "none")
        await conn.execute(
            "INSERT INTO gateway_undone_messages (fixmedins_code, msgid, oinfno, undone_by,"
            " outcome) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            fac,
            omsgid,
            oinfno,
            call.msgid,
            undone.outcome,
        )
        return undone


async def _undosettlement_of(
    conn: Connection, call: Call, omsgid: str, psn_no: str | None
) -> Undone:
    fac = call.fixmedins_code
    stored = await settlement_of(conn, fac, KEY_PREFIX + omsgid)
    if stored is None:
        # Not settled (yet): refused while the message is in progress (its msgid reserved
        # without an answer, or was a moment ago: a try that timed out may have left its
        # settlement in flight), else recorded as never arrived.
        busy = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM gateway_messages WHERE fixmedins_code = $1"
            " AND msgid = $2 AND infcode IS NULL"
            " AND pending_until > now() - make_interval(secs => $3::float8))",
            fac,
            omsgid,
            IN_PROGRESS_GRACE_S,
        )
        if busy:
            raise message_in_progress(omsgid)
        return Undone("none")
    if psn_no is not None and stored["psn_no"] != psn_no:
        raise mismatch(f"message {omsgid} settled for another person")
    cancelled = await _reverse(conn, call, stored["setl_id"], stored["psn_no"], stored["mdtrt_id"])
    return Undone("reversed", cancelled)


async def undone_by(conn: Connection, fixmedins_code: str, msgid: str) -> str | None:
    """The 2601 that named message ``msgid`` of the facility, if one did: a message that
    arrives after its undoing must do nothing (settlements refuse it with MSGID_UNDONE;
    hold ``lock_message`` for the msgid while checking, as ``undo`` does while recording)."""
    by: str | None = await conn.fetchval(
        "SELECT undone_by FROM gateway_undone_messages WHERE fixmedins_code = $1 AND msgid = $2",
        fixmedins_code,
        msgid,
    )
    return by


async def refuse_undone(conn: Connection, fixmedins_code: str, msgid: str) -> None:
    """For a registration or fee-line message (2201, 2401, 2204, 2301), first thing in its
    transaction: refused (``MSGID_UNDONE``) if a 2601 named it before it arrived. Holds the
    message's lock until the transaction ends, so a 2601 of it either sees what it did or
    is seen here (``gateway_message_undone``: the lock, then the read, one round trip)."""
    by: str | None = await conn.fetchval(
        "SELECT gateway_message_undone($1, $2)", fixmedins_code, msgid
    )
    if by is not None:
        raise msgid_undone(msgid, by)


def check_not_undone(msgid: str, undone_by: str | None) -> None:
    """``refuse_undone``'s answer, for a caller that read ``gateway_message_undone`` in a
    statement of its own (the first of its transaction)."""
    if undone_by is not None:
        raise msgid_undone(msgid, undone_by)
