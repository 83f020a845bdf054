"""Reconciliation transactions: 3201 (totals), 9101 (upload a file), 3202 (detail against an
uploaded file) and 9102 (download a file: the answer is the zip itself)."""

from __future__ import annotations

import msgspec

from cardsvc.national.operator import operator
from cardsvc.national.recon import (
    DetailIn,
    DownloadIn,
    Message,
    NationalReconciliation,
    StatementIn,
    UploadIn,
)
from cardsvc.national.registry import Call, FileAnswer, Output, node, transaction


def _service(call: Call) -> NationalReconciliation:
    services = call.services
    return NationalReconciliation(
        call.pool, services.audit, services.reconciliation, services.gateway.file_jobs
    )


def _message(call: Call) -> Message:
    return Message(
        fixmedins_code=call.fixmedins_code,
        msgid=call.msgid,
        actor=call.caller.actor,
        opter=call.opter,
        opter_name=call.opter_name,
        now=call.now,
        operator=operator(call),
    )


@transaction("3201")
async def statement(call: Call, inputs: dict[str, msgspec.Raw]) -> Output:
    data = node(inputs, "data", StatementIn)
    return {"stmtinfo": await _service(call).statement(_message(call), data)}


@transaction("9101")
async def upload(call: Call, inputs: dict[str, msgspec.Raw]) -> Output:
    stored = await _service(call).upload(_message(call), node(inputs, "fsUploadIn", UploadIn))
    return stored.fileinfo()


@transaction("3202")
async def detail(call: Call, inputs: dict[str, msgspec.Raw]) -> Output:
    data = node(inputs, "data", DetailIn)
    return {"fileinfo": (await _service(call).detail(_message(call), data)).fileinfo()}


async def download_again(call: Call, file_qury_no: str) -> bytes:
    """9102 sent again: the file it answered with, read again while it is kept (the stored
    answer is the file's number, never its bytes)."""
    return await _service(call).download_again(_message(call), file_qury_no)


@transaction("9102", replay_file=download_again)
async def download(call: Call, inputs: dict[str, msgspec.Raw]) -> Output:
    wanted = node(inputs, "fsDownloadIn", DownloadIn)
    content = await _service(call).download(_message(call), wanted)
    return FileAnswer(wanted.file_qury_no, content)
