"""Settlement transactions: 2206/2207 (outpatient and pharmacy pre-settlement and
settlement), 2303/2304 (inpatient, ``mid_setl_flag``), 2208/2305 (cancel a settlement) and
2601 (undo a message). Each decodes its ``data`` node and hands it to
``cardsvc.national.settle``; the answers are built by ``settle_output``.

Input nodes accept fields the interface has that cardsvc does not use (``psn_setlway``,
``invono``, the HIS's own split figures …): regions add fields of their own, and an HIS
sends what its region asks for. The figures are cardsvc's, computed from the visit's lines.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec

from cardsvc.errors import InvalidRequest
from cardsvc.national import certs, reversals
from cardsvc.national import settle as settling
from cardsvc.national.registry import Call, node, transaction
from cardsvc.national.settle_output import setldetail, setlinfo
from cardsvc.national.units import fen
from cardsvc.types import Insutype

Id30 = Annotated[str, msgspec.Meta(min_length=1, max_length=30)]
Flag = Literal["0", "1"]


class SettleData(msgspec.Struct, kw_only=True):
    """2206/2207 and 2303/2304 ``data`` (2303/2304 name no med_type; their ``chrg_bchno``,
    not in the interface, is cardsvc's: a stay of more lines than one settlement takes is
    settled by charge batch)."""

    psn_no: Id30
    mdtrt_cert_type: Annotated[str, msgspec.Meta(max_length=3)]
    mdtrt_cert_no: Annotated[str, msgspec.Meta(min_length=1, max_length=600)]
    card_sn: Annotated[str, msgspec.Meta(max_length=64)] = ""
    mdtrt_id: Id30
    insutype: Insutype
    med_type: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{2}$")] | None = None
    medfee_sumamt: Decimal
    chrg_bchno: Annotated[str, msgspec.Meta(max_length=30)] | None = None
    acct_used_flag: Flag = "1"
    mid_setl_flag: Flag = "0"
    psn_setlway: Annotated[str, msgspec.Meta(max_length=6)] = ""
    invono: Annotated[str, msgspec.Meta(max_length=30)] = ""


class CancelData(msgspec.Struct, kw_only=True):
    """2208/2305 ``data``."""

    setl_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    mdtrt_id: Id30 | None = None
    psn_no: Id30 | None = None


class UndoData(msgspec.Struct, kw_only=True):
    """2601 ``data``."""

    psn_no: Id30 | None = None
    omsgid: Id30
    oinfno: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4}$")]


def _order(data: SettleData, *, inpatient: bool) -> settling.Order:
    medfee_sumamt = fen(data.medfee_sumamt, "medfee_sumamt")
    if medfee_sumamt < 0:
        raise InvalidRequest("medfee_sumamt cannot be negative", code="AMOUNT_INVALID")
    return settling.Order(
        psn_no=data.psn_no,
        mdtrt_id=data.mdtrt_id,
        insutype=data.insutype,
        med_type=None if inpatient else data.med_type,  # absent: the visit's
        medfee_sumamt=medfee_sumamt,
        chrg_bchno=data.chrg_bchno or None,  # "" as absent
        acct_used_flag=data.acct_used_flag == "1",
        inpatient=inpatient,
        mid_setl_flag=data.mid_setl_flag == "1",
    )


def _answer(call: Call, done: settling.Settled, mdtrt_cert_type: str) -> dict[str, Any]:
    info = setlinfo(
        done.info,
        psn_type=done.psn_type,
        medins_setl_id=done.msgid,
        mdtrt_cert_type=mdtrt_cert_type,
        clr_optins=call.mdtrtarea_admvs,
    )
    return {"setlinfo": info, "setldetail": setldetail(done.info)}


async def _settle(call: Call, inputs: dict[str, msgspec.Raw], *, inpatient: bool) -> dict[str, Any]:
    data = node(inputs, "data", SettleData)
    order = _order(data, inpatient=inpatient)
    cert = await certs.resolve(
        call, data.mdtrt_cert_type, data.mdtrt_cert_no, data.card_sn, settling=True
    )
    return _answer(call, await settling.settle(call, order, cert), data.mdtrt_cert_type)


async def _preview(
    call: Call, inputs: dict[str, msgspec.Raw], *, inpatient: bool
) -> dict[str, Any]:
    data = node(inputs, "data", SettleData)
    order = _order(data, inpatient=inpatient)
    cert = await certs.resolve(
        call, data.mdtrt_cert_type, data.mdtrt_cert_no, data.card_sn, settling=False
    )
    return _answer(call, await settling.preview(call, order, cert), data.mdtrt_cert_type)


def _cancelled(call: Call, done: reversals.Cancelled) -> dict[str, Any]:
    """The reversal's figures, positive: what was given back."""
    info = setlinfo(
        done.settlement,
        psn_type=done.psn_type,
        medins_setl_id=call.msgid,
        mdtrt_cert_type="03",
        clr_optins=call.mdtrtarea_admvs,
        setl_id=done.reversal.reversal_id,
        setl_time=done.reversal.revs_time,
        balc=done.reversal.balc,
    )
    return {"setlinfo": info, "setldetail": setldetail(done.settlement)}


async def _cancel(call: Call, inputs: dict[str, msgspec.Raw], *, inpatient: bool) -> dict[str, Any]:
    data = node(inputs, "data", CancelData)
    done = await reversals.cancel(
        call, data.setl_id, mdtrt_id=data.mdtrt_id, psn_no=data.psn_no, inpatient=inpatient
    )
    return _cancelled(call, done)


@transaction("2206")
async def outpatient_presettle(call: Call, inputs: dict[str, msgspec.Raw]) -> dict[str, Any]:
    return await _preview(call, inputs, inpatient=False)


@transaction("2207")
async def outpatient_settle(call: Call, inputs: dict[str, msgspec.Raw]) -> dict[str, Any]:
    return await _settle(call, inputs, inpatient=False)


@transaction("2208")
async def outpatient_cancel(call: Call, inputs: dict[str, msgspec.Raw]) -> dict[str, Any]:
    return await _cancel(call, inputs, inpatient=False)


@transaction("2303")
async def inpatient_presettle(call: Call, inputs: dict[str, msgspec.Raw]) -> dict[str, Any]:
    return await _preview(call, inputs, inpatient=True)


@transaction("2304")
async def inpatient_settle(call: Call, inputs: dict[str, msgspec.Raw]) -> dict[str, Any]:
    return await _settle(call, inputs, inpatient=True)


@transaction("2305")
async def inpatient_cancel(call: Call, inputs: dict[str, msgspec.Raw]) -> dict[str, Any]:
    return await _cancel(call, inputs, inpatient=True)


@transaction("2601")
async def undo_message(call: Call, inputs: dict[str, msgspec.Raw]) -> dict[str, Any]:
    data = node(inputs, "data", UndoData)
    undone = await reversals.undo(call, data.omsgid, data.oinfno, data.psn_no)
    out: dict[str, Any] = {
        "result": {"omsgid": data.omsgid, "oinfno": data.oinfno, "outcome": undone.outcome}
    }
    if undone.cancelled is not None:
        out.update(_cancelled(call, undone.cancelled))
    return out
