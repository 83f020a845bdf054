"""Visits and fee lines: 2201 register, 2202 cancel registration, 2203 visit information,
2204 fee details, 2205 cancel details; 2401 admission, 2301 fee details, 2302 cancel
details, 2402 discharge. Decode, call ``visit_services``, encode."""

from __future__ import annotations

from typing import Any

import msgspec

from cardsvc.national import visit_services as service
from cardsvc.national.registry import Call, Output, node, transaction
from cardsvc.national.visit_models import (
    AdmissionInfo,
    AdmissionOut,
    CancelFeesData,
    CancelInpatientFeesData,
    CancelRegistrationData,
    Diagnoses,
    DischargeInfo,
    ExpContent,
    ExpContentField,
    FeeDetails,
    RegisterData,
    RegisterOut,
    VisitInfo,
    as_sent,
    exp_content,
    exp_content_node,
    parse_time,
    rows_as_sent,
)

Inputs = dict[str, msgspec.Raw]


def _exp(field: ExpContentField, inputs: Inputs, where: str) -> ExpContent:
    """``exp_content`` of the main node, else an ``exp_content`` node of the input."""
    if field in (None, "") and "exp_content" in inputs:
        return exp_content(exp_content_node(inputs["exp_content"]), "exp_content")
    return exp_content(field, where)


def _details(inputs: Inputs, main: str) -> dict[str, Any]:
    """The main node and the diagnoses (``diseinfo``, optional) as sent."""
    kept: dict[str, Any] = {main: as_sent(inputs[main], main)}
    if "diseinfo" in inputs:
        node(inputs, "diseinfo", Diagnoses)
        kept["diseinfo"] = rows_as_sent(inputs["diseinfo"], "diseinfo")
    return kept


@transaction("2201")
async def register(call: Call, inputs: Inputs) -> Output:
    data = node(inputs, "data", RegisterData)
    reg = service.Registration(
        psn_no=data.psn_no,
        insutype=data.insutype,
        med_type=data.med_type,
        begntime=parse_time(data.begntime, "data.begntime", call.now),
        ipt_otp_no=data.ipt_otp_no,
        exp=_exp(data.exp_content, inputs, "data"),
        info=_details(inputs, "data"),
    )
    visit = await service.register(
        call, reg, data.mdtrt_cert_type, data.mdtrt_cert_no, data.card_sn
    )
    out = RegisterOut(mdtrt_id=visit.mdtrt_id, psn_no=visit.psn_no, ipt_otp_no=visit.ipt_otp_no)
    return {"data": out}


@transaction("2202")
async def cancel_registration(call: Call, inputs: Inputs) -> Output:
    data = node(inputs, "data", CancelRegistrationData)
    await service.cancel_registration(call, data.mdtrt_id, data.psn_no)
    return {}


@transaction("2203")
async def visit_info(call: Call, inputs: Inputs) -> Output:
    info = node(inputs, "mdtrtinfo", VisitInfo)
    exp = _exp(info.exp_content, inputs, "mdtrtinfo")
    await service.record_info(
        call, info.mdtrt_id, info.psn_no, info.med_type, exp, _details(inputs, "mdtrtinfo")
    )
    return {}


async def _upload(call: Call, inputs: Inputs, *, inpatient: bool) -> Output:
    details = node(inputs, "feedetail", FeeDetails)
    sent = rows_as_sent(inputs["feedetail"], "feedetail")
    return await service.upload_fees(call, details, sent, inpatient=inpatient)


@transaction("2204")
async def fee_details(call: Call, inputs: Inputs) -> Output:
    return await _upload(call, inputs, inpatient=False)


@transaction("2205")
async def cancel_fee_details(call: Call, inputs: Inputs) -> Output:
    data = node(inputs, "data", CancelFeesData)
    await service.cancel_fees(
        call, data.mdtrt_id, data.psn_no, inpatient=False, chrg_bchno=data.chrg_bchno
    )
    return {}


@transaction("2401")
async def admission(call: Call, inputs: Inputs) -> Output:
    info = node(inputs, "mdtrtinfo", AdmissionInfo)
    reg = service.Registration(
        psn_no=info.psn_no,
        insutype=info.insutype,
        med_type=info.med_type,
        begntime=parse_time(info.begntime, "mdtrtinfo.begntime", call.now),
        ipt_otp_no=info.ipt_no,
        exp=_exp(info.exp_content, inputs, "mdtrtinfo"),
        info=_details(inputs, "mdtrtinfo"),
        inpatient=True,
    )
    visit = await service.register(
        call, reg, info.mdtrt_cert_type, info.mdtrt_cert_no, info.card_sn
    )
    return {"result": AdmissionOut(mdtrt_id=visit.mdtrt_id)}


@transaction("2301")
async def inpatient_fee_details(call: Call, inputs: Inputs) -> Output:
    return await _upload(call, inputs, inpatient=True)


@transaction("2302")
async def cancel_inpatient_fee_details(call: Call, inputs: Inputs) -> Output:
    data = node(inputs, "data", CancelInpatientFeesData)
    await service.cancel_fees(
        call, data.mdtrt_id, data.psn_no, inpatient=True, feedetl_sn=data.feedetl_sn
    )
    return {}


@transaction("2402")
async def discharge(call: Call, inputs: Inputs) -> Output:
    info = node(inputs, "dscginfo", DischargeInfo)
    endtime = parse_time(info.endtime, "dscginfo.endtime", call.now)
    await service.discharge(call, info.mdtrt_id, info.psn_no, endtime, _details(inputs, "dscginfo"))
    return {}
