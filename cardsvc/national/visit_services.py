"""The visit transactions' work: registration (2201, 2401, a pharmacy's first 2204), visit
information (2203), fee lines (2204/2301) and their cancellation (2205/2302), cancelling a
registration (2202) and discharge (2402).

Each runs in one database transaction holding the visit's row lock, so that two messages
about one visit (or two tries of one message) take turns; each is idempotent under its
``msgid``: a rerun finds what the first run stored and answers the same.

A registration checks what a settlement of the visit would check first, with cardsvc's
codes (``policy.check_eligibility`` on the person, the card of the certificate, the
facility and the visit type): ``CARD_NOT_ACTIVE``, ``INSURANCE_NOT_ACTIVE``,
``FACILITY_SUSPENDED``, ``NO_AGREEMENT``, ``MED_TYPE_NOT_ALLOWED``, ``INJURY_CASE_INVALID``.
It does not check year-to-date limits (``MATERNITY_LIMIT``) or the delivery type: those
belong to the settlement, which checks everything again.

A pharmacy's first 2204 carries no certificate: the visit it opens is the pharmacy's
basket under the ``psn_no`` it names, checked for the facility and the visit type only
(``FACILITY_SUSPENDED``, ``NO_AGREEMENT``, ``MED_TYPE_NOT_ALLOWED``: the same answer
whoever the ``psn_no`` names, or if it names nobody). The person is never looked up there:
whether they exist, are insured in the scheme or have a work-injury case is checked by the
pre-settlement and the settlement, which need the certificate of that person. 2203 changing
the visit type likewise checks the facility and the type only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import msgspec

from cardsvc import clock
from cardsvc.audit.services import NewEntry, new_entry
from cardsvc.db import Connection, transaction
from cardsvc.errors import Conflict, Forbidden, InvalidRequest, ServiceUnavailable
from cardsvc.national import certs, fees, reversals, visits
from cardsvc.national.operator import operator
from cardsvc.national.registry import Call, Output
from cardsvc.national.visit_models import (
    ExpContent,
    FeeDetail,
    exp_content,
    parse_time,
)
from cardsvc.national.visits import Visit, VisitKind
from cardsvc.settlement import policy
from cardsvc.settlement.params import CURRENT_POLICY_VERSION, PolicyParams, load_params
from cardsvc.settlement.snapshot import load_snapshot

# The visit type a registration gets when it names none (2201 has no med_type; 2203 may
# change it): the first of these the policy allows for the scheme at the facility.
_GENERAL_VISITS = (policy.OUTPATIENT, policy.PRENATAL, policy.PHARMACY_PURCHASE)
_FACILITY = (
    "SELECT row_to_json(f) FROM (SELECT fixmedins_code, type, level, credit_rating, status,"
    " agreements FROM facilities WHERE fixmedins_code = $1) f"
)
_facility_decoder = msgspec.json.Decoder(policy.FacilityInfo)
# 2204/2301's first read, one round trip: the 2601 check (``refuse_undone``: the message's
# lock, held to the end of the transaction, then the read), the facility (a pharmacy's
# first 2204 opens its visit) and the lines' catalog items.
_UPLOAD_OPENING = (
    "SELECT gateway_message_undone($1, $3) AS undone_by,"
    " (SELECT row_to_json(f) FROM (SELECT fixmedins_code, type, level, credit_rating,"
    " status, agreements FROM facilities WHERE fixmedins_code = $1) f) AS facility,"
    " (SELECT coalesce(json_agg(c), '[]') FROM (SELECT code, chrgitm_lv, selfpay_prop,"
    " max_price, work_injury FROM catalog_items WHERE code = ANY($2::text[])) c) AS catalog"
)
_catalog_decoder = msgspec.json.Decoder(list[policy.CatalogItem])
_VALID_CASES = (
    "SELECT case_id FROM injury_cases WHERE psn_no = $1 AND status = 'approved'"
    " AND valid_from <= $2 AND valid_to >= $2 ORDER BY case_id LIMIT 2"
)


def _params() -> PolicyParams:
    return load_params(CURRENT_POLICY_VERSION)


def default_med_type(params: PolicyParams, insutype: str, facility_type: str) -> str:
    """The general visit type of ``insutype`` at a facility of ``facility_type``: outpatient
    (prenatal for maternity) at a hospital, a purchase at a pharmacy. A scheme with none
    there gets outpatient, which the registration's checks refuse."""
    allowed = {
        row.med_type
        for row in params.allowed_med_types
        if row.insutype == insutype and row.facility_type == facility_type
    }
    return next((m for m in _GENERAL_VISITS if m in allowed), policy.OUTPATIENT)


def pharmacy_scheme(params: PolicyParams) -> str:
    """The scheme of a pharmacy visit opened by 2204 without ``insutype``: the first the
    policy allows purchases at a pharmacy under, work injury aside (it needs a case)."""
    return next(
        row.insutype
        for row in params.allowed_med_types
        if row.med_type == policy.PHARMACY_PURCHASE
        and row.facility_type == "pharmacy"
        and row.insutype not in params.work_injury_insutypes
    )


def _kind_at(facility_type: str) -> VisitKind:
    return "pharmacy" if facility_type == "pharmacy" else "outpatient"


class Registration(msgspec.Struct, frozen=True, kw_only=True):
    """What opens a visit, whichever message it came in."""

    psn_no: str
    insutype: str
    med_type: str | None  # None: the default for the facility and scheme
    begntime: dt.datetime
    ipt_otp_no: str = ""
    exp: ExpContent = msgspec.field(default_factory=ExpContent)
    info: dict[str, Any] = msgspec.field(default_factory=dict)
    inpatient: bool = False


def _person_mismatch() -> Forbidden:
    return Forbidden("psn_no is not the person of this visit", code="VISIT_PERSON_MISMATCH")


def _closed(visit: Visit) -> Conflict:
    return Conflict(f"visit {visit.mdtrt_id} is {visit.status}", code="VISIT_CLOSED")


async def _injury_case(conn: Connection, reg: Registration, on: dt.date) -> str | None:
    """The work-injury case of the visit: the one ``exp_content`` names, else the person's
    only approved case valid today (none or several: ``INJURY_CASE_INVALID``)."""
    if reg.insutype not in _params().work_injury_insutypes:
        return None
    if reg.exp.injury_case_id is not None:
        return reg.exp.injury_case_id
    return await _only_case(conn, reg.psn_no, on)


async def _only_case(conn: Connection, psn_no: str, on: dt.date) -> str:
    """The person's only approved work-injury case valid on ``on`` (none or several:
    ``INJURY_CASE_INVALID``)."""
    cases = await conn.fetch(_VALID_CASES, psn_no, on)
    if len(cases) != 1:
        raise policy.PolicyRefusal(
            "INJURY_CASE_INVALID",
            "name the work-injury case in exp_content (injury_case_id): the person has "
            + ("no approved case valid today" if not cases else "several approved cases"),
            {"cases": len(cases)},
        )
    return str(cases[0]["case_id"])


async def with_injury_case(conn: Connection, visit: Visit, on: dt.date) -> Visit:
    """``visit`` with its work-injury case: a pharmacy's visit opened by 2204 without one
    named takes the person's only valid approved case once the person is certified (its
    pre-settlement or settlement). None or several: left without, for the settlement's
    own checks to refuse in their order (``INSURANCE_NOT_ACTIVE`` before
    ``INJURY_CASE_INVALID``)."""
    if visit.injury_case_id is not None or visit.insutype not in _params().work_injury_insutypes:
        return visit
    cases = await conn.fetch(_VALID_CASES, visit.psn_no, on)
    if len(cases) != 1:
        return visit
    return msgspec.structs.replace(visit, injury_case_id=str(cases[0]["case_id"]))


async def _facility(conn: Connection, call: Call) -> policy.FacilityInfo:
    return _facility_decoder.decode(await conn.fetchval(_FACILITY, call.fixmedins_code))


async def _checked_visit(
    conn: Connection,
    call: Call,
    reg: Registration,
    *,
    card_no: str | None,
    mdtrt_id: str | None,
) -> Visit:
    """The visit ``reg`` opens, checked as a settlement would check it first; ``mdtrt_id``
    None: cardsvc mints one. Stored by the caller."""
    today = clock.business_date(call.now)
    case_id = await _injury_case(conn, reg, today)
    snapshot = await load_snapshot(
        conn,
        psn_no=reg.psn_no,
        card_no=card_no or "",
        fixmedins_code=call.fixmedins_code,
        item_codes=[],
        injury_case_id=case_id,
        settle_date=today,
    )
    facility_type = snapshot.facility.type
    kind: VisitKind = "inpatient" if reg.inpatient else _kind_at(facility_type)
    med_type = reg.med_type or default_med_type(_params(), reg.insutype, facility_type)
    # No year-to-date limit at registration (the settlement's rule), and no card when the
    # certificate is the identity number: the card is checked when it is presented.
    snapshot = msgspec.structs.replace(
        snapshot,
        year=policy.YearState(),
        card_status=snapshot.card_status if card_no else policy.ACTIVE,
    )
    policy.check_eligibility(
        _params(),
        snapshot,
        policy.SettlementRequest(
            insutype=reg.insutype,
            med_type=med_type,
            injury_case_id=case_id,
            # The delivery type may come later (2203); the settlement requires it.
            delivery_type=reg.exp.delivery_type or "normal",
            lines=(),
        ),
    )
    return Visit(
        fixmedins_code=call.fixmedins_code,
        mdtrt_id=mdtrt_id or await visits.mint_mdtrt_id(conn, call.now),
        psn_no=reg.psn_no,
        insutype=reg.insutype,
        med_type=med_type,
        kind=kind,
        status="open",
        card_no=card_no,
        ipt_otp_no=reg.ipt_otp_no,
        injury_case_id=case_id,
        delivery_type=reg.exp.delivery_type,
        begntime=reg.begntime,
        endtime=None,
        created_msgid=call.msgid,
        closed_msgid=None,
    )


def _entry(call: Call, action: str, visit: Visit, **data: Any) -> NewEntry:
    """The audit entry ``_audit`` appends, for a statement that appends it with its change."""
    return new_entry(
        call.caller.actor,
        action,
        "visit",
        f"{visit.fixmedins_code}/{visit.mdtrt_id}",
        {**operator(call), **data},
    )


async def _audit(conn: Connection, call: Call, action: str, visit: Visit, **data: Any) -> None:
    await call.services.audit.append(
        conn,
        actor=call.caller.actor,
        action=action,
        object_type="visit",
        object_id=f"{visit.fixmedins_code}/{visit.mdtrt_id}",
        data={**operator(call), **data},
    )


async def register(
    call: Call, reg: Registration, cert_type: str, cert_no: str, card_sn: str
) -> Visit:
    """2201/2401: the visit, opened once per message (a rerun returns it unchanged)."""
    async with call.pool.acquire() as conn:
        earlier = await visits.visit_created_by(conn, call.fixmedins_code, call.msgid)
    if earlier is not None:
        return earlier
    certified = await certs.resolve(call, cert_type, cert_no, card_sn, settling=False)
    certified.require_person(reg.psn_no)
    async with transaction(call.pool) as conn:
        await reversals.refuse_undone(conn, call.fixmedins_code, call.msgid)
        visit = await _checked_visit(conn, call, reg, card_no=certified.card_no, mdtrt_id=None)
        stored = await visits.open_visit(conn, visit, reg.info)
        if stored.created_msgid != call.msgid:  # the minted mdtrt_id was a pharmacy's own
            raise ServiceUnavailable("the visit could not be opened: retry", code="VISIT_BUSY")
        if stored.mdtrt_id == visit.mdtrt_id:  # else a concurrent try of this message won
            await _audit(
                conn, call, "visit.registered", stored, psn_no=stored.psn_no, kind=stored.kind
            )
    return stored


async def _open_visit(
    conn: Connection, call: Call, mdtrt_id: str, *, psn_no: str, inpatient: bool
) -> Visit:
    visit = await visits.find_visit(conn, call.fixmedins_code, mdtrt_id)
    if visit is None:
        raise visits.visit_not_found(mdtrt_id)
    return _check_open(visit, psn_no=psn_no, inpatient=inpatient)


def _check_open(visit: Visit, *, psn_no: str, inpatient: bool) -> Visit:
    """The visit (held ``FOR UPDATE``) may take this person's lines of this kind."""
    if visit.psn_no != psn_no:
        raise _person_mismatch()
    if visit.status == "cancelled":
        raise _closed(visit)
    if inpatient != (visit.kind == "inpatient"):
        raise InvalidRequest(
            f"visit {visit.mdtrt_id} is "
            + ("an inpatient stay: use 2301/2302" if not inpatient else "not an inpatient stay"),
            code="VISIT_KIND_MISMATCH",
        )
    return visit


async def cancel_registration(call: Call, mdtrt_id: str, psn_no: str) -> None:
    """2202: the visit is cancelled with its unsettled lines; not once it has a settlement."""
    async with transaction(call.pool) as conn:
        visit = await visits.find_visit(conn, call.fixmedins_code, mdtrt_id)
        if visit is None:
            raise visits.visit_not_found(mdtrt_id)
        if visit.psn_no != psn_no:
            raise _person_mismatch()
        if visit.status == "cancelled":
            return
        await visits.lock_lines(conn, visit)
        if await visits.has_settled_lines(conn, call.fixmedins_code, mdtrt_id):
            raise visits.visit_has_settlement(mdtrt_id)
        await visits.cancel_lines(conn, visit, call.msgid)
        await visits.close_visit(conn, visit, "cancelled", call.msgid)
        await _audit(conn, call, "visit.cancelled", visit)


async def record_info(
    call: Call, mdtrt_id: str, psn_no: str, med_type: str, exp: ExpContent, info: dict[str, Any]
) -> None:
    """2203: the visit's type, delivery type and details (diagnoses) stored with it."""
    async with transaction(call.pool) as conn:
        visit = await _open_visit(conn, call, mdtrt_id, psn_no=psn_no, inpatient=False)
        delivery = exp.delivery_type or visit.delivery_type
        if (med_type, delivery) != (visit.med_type, visit.delivery_type):
            # What a settlement applies changes: one that read the visit before is refused
            # (its lines are no longer the versions it read), one being written is waited for.
            await visits.lock_lines(conn, visit, renew=True)
        if med_type != visit.med_type:
            if await visits.has_settled_lines(conn, call.fixmedins_code, mdtrt_id):
                raise visits.visit_has_settlement(mdtrt_id)
            # The person was checked when a certificate showed them (registration), or
            # will be (a pharmacy's visit, at its settlement): only the type is new here.
            facility = await _facility(conn, call)
            policy.check_visit_type(_params(), facility, visit.insutype, med_type)
        await visits.update_visit(conn, visit, info=info, med_type=med_type, delivery_type=delivery)
        changed = {
            name: {"from": before, "to": after}
            for name, before, after in (
                ("med_type", visit.med_type, med_type),
                ("delivery_type", visit.delivery_type, delivery),
            )
            if before != after
        }
        if changed:  # what the settlement will apply: who changed it, and from what
            await _audit(conn, call, "visit.updated", visit, **changed)


async def _upload_opening(
    conn: Connection, call: Call, codes: Sequence[str]
) -> tuple[policy.FacilityInfo, dict[str, policy.CatalogItem]]:
    """``refuse_undone``, then the facility and the catalog items of ``codes``."""
    row = await conn.fetchrow(_UPLOAD_OPENING, call.fixmedins_code, sorted(set(codes)), call.msgid)
    reversals.check_not_undone(call.msgid, row["undone_by"])
    items = _catalog_decoder.decode(row["catalog"])
    return _facility_decoder.decode(row["facility"]), {item.code: item for item in items}


async def _pharmacy_visit(
    conn: Connection,
    call: Call,
    facility: policy.FacilityInfo,
    first: FeeDetail,
    exp: ExpContent,
) -> tuple[Visit, bool]:
    """A pharmacy's 2204 naming a new mdtrt_id opens its visit (``VISIT_NOT_FOUND`` at a
    hospital): the scheme ``insutype`` of the line, else the policy's pharmacy scheme. No
    certificate and no look-up of the person (see the module's docstring): the card is
    presented at pre-settlement and settlement, which check the person. The visit, held
    ``FOR UPDATE``, and whether this call opened it."""
    if facility.type != "pharmacy":
        raise visits.visit_not_found(first.mdtrt_id)
    insutype = first.insutype or pharmacy_scheme(_params())
    med_type = first.med_type or default_med_type(_params(), insutype, facility.type)
    policy.check_visit_type(_params(), facility, insutype, med_type)
    visit = Visit(
        fixmedins_code=call.fixmedins_code,
        mdtrt_id=first.mdtrt_id,
        psn_no=first.psn_no,
        insutype=insutype,
        med_type=med_type,
        kind="pharmacy",
        status="open",
        card_no=None,
        ipt_otp_no="",
        injury_case_id=exp.injury_case_id,  # checked against the person at settlement
        delivery_type=exp.delivery_type,
        begntime=call.now,
        endtime=None,
        created_msgid=call.msgid,
        closed_msgid=None,
    )
    registered = _entry(
        call,
        "visit.registered",
        visit,
        psn_no=visit.psn_no,
        kind="pharmacy",
        certified=False,  # the pharmacy's word: its settlement certifies the person
    )
    stored, opened = await visits.open_new_visit(conn, visit, {"opened_by": "2204"}, registered)
    if stored.psn_no != first.psn_no:
        raise _person_mismatch()
    return stored, opened


async def upload_fees(
    call: Call,
    details: Sequence[FeeDetail],
    sent: Sequence[dict[str, Any]],
    *,
    inpatient: bool,
) -> Output:
    """2204/2301: the lines stored with their Step-1 split (answered per line); the answer
    is stored in the same transaction."""
    mdtrt_id, psn_no = fees.check_message(details)
    for detail in details:
        if detail.fee_ocur_time is not None:
            parse_time(
                detail.fee_ocur_time, f"feedetail {detail.feedetl_sn}: fee_ocur_time", call.now
            )
    lines = [
        fees.priced(detail, raw, refunds_allowed=inpatient)
        for detail, raw in zip(details, sent, strict=True)
    ]
    async with transaction(call.pool) as conn:
        facility, catalog = await _upload_opening(conn, call, [line.code for line in lines])
        found = await visits.find_visit(conn, call.fixmedins_code, mdtrt_id)
        new_visit = False
        if found is None and not inpatient:
            exp = exp_content(details[0].exp_content, "feedetail")
            found, new_visit = await _pharmacy_visit(conn, call, facility, details[0], exp)
        if found is None or found.mdtrt_id != mdtrt_id:
            raise visits.visit_not_found(mdtrt_id)
        visit = _check_open(found, psn_no=psn_no, inpatient=inpatient)
        if any(line.init_feedetl_sn is not None for line in lines):  # refunds: held first
            await visits.lock_lines(conn, visit)
        named = [line.feedetl_sn for line in lines] + [
            line.init_feedetl_sn for line in lines if line.init_feedetl_sn is not None
        ]
        # A visit this message has just opened has no lines yet.
        stored = (
            {}
            if new_visit
            else await visits.lines_by_sn(conn, call.fixmedins_code, mdtrt_id, named)
        )
        plan = fees.plan_upload(_params(), visit.insutype, visit.med_type, lines, stored, catalog)
        if plan.refunded:
            await visits.mark_refunded(conn, visit, plan.refunded, call.msgid)
            await _audit(conn, call, "visit.fees_refunded", visit, feedetl_sns=plan.refunded)
        if plan.store:  # new lines (a rerun stores none: audited once)
            uploaded = _entry(
                call,
                "visit.fees_uploaded",
                visit,
                lines=len(plan.store),
                total=sum(line.total for line in plan.store),
            )
            await visits.store_lines(conn, visit, plan.store, call.msgid, uploaded)
        results = [fees.fee_result(mdtrt_id, line, split) for line, split in plan.results]
        output: Output = {"result": results}
        await call.answered(conn, output)
    return output


async def cancel_fees(
    call: Call,
    mdtrt_id: str,
    psn_no: str,
    *,
    inpatient: bool,
    chrg_bchno: str | None = None,
    feedetl_sn: str | None = None,
) -> int:
    """2205 (a charge batch, ``"0000"`` all) / 2302 (one line, ``"0000"`` all): the unsettled
    lines cancelled; a named line that is settled is refused. Returns how many."""
    async with transaction(call.pool) as conn:
        visit = await _open_visit(conn, call, mdtrt_id, psn_no=psn_no, inpatient=inpatient)
        await visits.lock_lines(conn, visit)
        if feedetl_sn is not None and feedetl_sn != visits.ALL_BATCHES:
            found = await visits.lines_by_sn(conn, call.fixmedins_code, mdtrt_id, [feedetl_sn])
            line = found.get(feedetl_sn)
            if line is None:
                raise fees.line_not_found(feedetl_sn)
            if line.setl_id is not None:
                raise fees.line_settled(feedetl_sn)
            count = await visits.cancel_lines(conn, visit, call.msgid, feedetl_sn=feedetl_sn)
        else:
            count = await visits.cancel_lines(conn, visit, call.msgid, chrg_bchno=chrg_bchno)
        if count:
            await _audit(conn, call, "visit.fees_cancelled", visit, lines=count)
        return count


async def discharge(
    call: Call, mdtrt_id: str, psn_no: str, endtime: dt.datetime, info: dict[str, Any]
) -> None:
    """2402: the stay ends (its lines stay for the final settlement)."""
    async with transaction(call.pool) as conn:
        visit = await _open_visit(conn, call, mdtrt_id, psn_no=psn_no, inpatient=True)
        if visit.status == "discharged":
            if visit.closed_msgid == call.msgid:
                return
            raise _closed(visit)
        if endtime < visit.begntime:
            raise InvalidRequest("endtime is before the admission's begntime", code="INPUT_INVALID")
        await visits.close_visit(conn, visit, "discharged", call.msgid, endtime=endtime, info=info)
        await _audit(conn, call, "visit.discharged", visit)
