"""The national gateway against hostile senders, on real PostgreSQL and hsm_stub: figures far
out of range refused at once (never an integer of a million digits, never INTERNAL); the TIF
headers checked before the body is taken in, an unknown client remembered; reconciliation
files read and compared off the event loop, one file message of a facility at a time."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Awaitable
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
import pytest_asyncio

from cardsvc import db
from cardsvc.audit.services import AuditLog
from cardsvc.clock import business_date
from cardsvc.config import Settings
from cardsvc.national import stmtfiles
from cardsvc.national.clients import GatewayClients
from cardsvc.privacy import DataProtector
from tests.support.api import Service
from tests.support.gateway import (
    PATH,
    Answer,
    GatewayClient,
    gateway_client,
    register_client,
    tif_headers,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

_DECODER = msgspec.json.Decoder(float_hook=Decimal)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw(service: Service) -> GatewayClient:
    return await gateway_client(service)


def _zero_statement(count: Any) -> dict[str, Any]:
    today = business_date().isoformat()
    return {
        "data": {
            "insutype": "310",
            "clr_type": "11",
            "setl_optins": "320200",
            "stmt_begndate": today,
            "stmt_enddate": today,
            "medfee_sumamt": "0",
            "fund_pay_sumamt": "0",
            "acct_pay": "0",
            "fixmedins_setl_cnt": count,
        }
    }


async def _call_with_number(gw: GatewayClient, infno: str, inputs: Any, number: bytes) -> Answer:
    """A message whose ``"NUMBER"`` placeholder is replaced by ``number``: a JSON number
    written as is (no encoder writes ``1e999999`` or five thousand digits)."""
    body = msgspec.json.encode(gw.envelope(infno, inputs)).replace(b'"NUMBER"', number)
    return await gw.post(body)


async def _post_large(gw: GatewayClient, env: dict[str, Any]) -> Answer:
    """``gw.post`` for a body of megabytes (streamed, as aiohttp wants it)."""
    body = io.BytesIO(msgspec.json.encode(env))
    url = gw.service.base_url + PATH
    async with gw.service.http.post(url, data=body, headers=gw.headers()) as resp:
        raw = await resp.read()
        return Answer(resp.status, _DECODER.decode(raw), raw, resp.content_type)


async def _ok_large(gw: GatewayClient, env: dict[str, Any]) -> Any:
    answer = await _post_large(gw, env)
    assert answer.status == 200 and answer.infcode == 0, answer.body
    return answer.body["output"]


def _refusal(answer: Answer) -> str | None:
    assert answer.status == 200 and answer.infcode == -1, (answer.status, answer.body)
    assert answer.body["output"] == {}
    return answer.code


# ------------------------------------------------------------------ figures out of range


@pytest.mark.parametrize(
    "count", ["1e999999", "1E+999999", "1e5000", "1e12", "-1", "1.5", "NaN", "Infinity"]
)
async def test_3201_a_count_out_of_range_is_refused_at_once(gw: GatewayClient, count: str):
    started = time.monotonic()
    assert _refusal(await gw.call("3201", _zero_statement(count))) == "INPUT_INVALID"
    assert time.monotonic() - started < 2  # not an integer of a million digits


async def test_3201_a_count_written_as_a_huge_json_number_is_refused_at_once(gw: GatewayClient):
    started = time.monotonic()
    answer = await _call_with_number(gw, "3201", _zero_statement("NUMBER"), b"1e999999")
    assert _refusal(answer) == "INPUT_INVALID"
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "number",
    [b"1" + b"0" * 5000, b"1e99999999999999999999", b"-1e99999999999999999999"],
    ids=["5001-digit-integer", "exponent-past-decimal", "negative-exponent-past-decimal"],
)
async def test_a_number_no_figure_can_hold_is_input_invalid_not_internal(
    gw: GatewayClient, number: bytes
):
    answer = await _call_with_number(gw, "3201", _zero_statement("NUMBER"), number)
    assert _refusal(answer) == "INPUT_INVALID"


async def test_amounts_out_of_range_are_amount_invalid(gw: GatewayClient):
    inputs = _zero_statement("0")
    inputs["data"]["medfee_sumamt"] = "NUMBER"
    assert _refusal(await _call_with_number(gw, "3201", inputs, b"1e999999")) == "AMOUNT_INVALID"
    inputs["data"]["medfee_sumamt"] = "1.0000000000000000000000000000001"  # not rounded away
    assert _refusal(await gw.call("3201", inputs)) == "AMOUNT_INVALID"


async def _upload(gw: GatewayClient, rows: list[stmtfiles.FileRow]) -> dict[str, Any]:
    out: dict[str, Any] = await gw.ok("9101", _upload_in(gw, stmtfiles.upload_zip(rows)))
    return out


def _upload_in(gw: GatewayClient, data: bytes) -> dict[str, Any]:
    return {
        "fsUploadIn": {
            "in": base64.b64encode(data).decode(),
            "filename": "stmt.zip",
            "fixmedins_code": gw.fixmedins_code,
        }
    }


def _detail(file_qury_no: str, **figures: Any) -> dict[str, Any]:
    today = business_date().isoformat()
    data = {
        "file_qury_no": file_qury_no,
        "stmt_begndate": today,
        "stmt_enddate": today,
        "medfee_sumamt": "0",
        "fund_pay_sumamt": "0",
        "cash_payamt": "0",
        "fixmedins_setl_cnt": "0",
    }
    return {"data": {**data, **figures}}


@pytest.mark.parametrize(
    ("figure", "value", "code"),
    [
        ("fixmedins_setl_cnt", "1e5000", "INPUT_INVALID"),  # was a ValueError: INTERNAL
        ("fixmedins_setl_cnt", "1e999999", "INPUT_INVALID"),
        ("fixmedins_setl_cnt", "-3", "INPUT_INVALID"),
        ("medfee_sumamt", "1e999999", "AMOUNT_INVALID"),
        ("cash_payamt", "-1e5000", "AMOUNT_INVALID"),
    ],
)
async def test_3202_figures_out_of_range_are_refused_at_once(
    gw: GatewayClient, figure: str, value: str, code: str
):
    rows = [stmtfiles.FileRow("S1", "M1", "P1", 100, 50, 0, "0")]
    upload = await _upload(gw, rows)
    started = time.monotonic()
    answer = await gw.call("3202", _detail(upload["file_qury_no"], **{figure: value}))
    assert _refusal(answer) == code
    assert time.monotonic() - started < 2


# ------------------------------------------------------------------ authentication first


async def _status_before_the_body(service: Service, headers: dict[str, str]) -> bytes:
    """Sends the headers of a 1 MB message and 1 KB of its body, then waits for the status
    line: an unauthenticated request is answered without the rest."""
    url = urlsplit(service.base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        head = [
            f"POST {PATH} HTTP/1.1",
            f"Host: {url.netloc}",
            "Content-Type: application/json",
            f"Content-Length: {1024 * 1024}",
            *(f"{name}: {value}" for name, value in headers.items() if name != "Content-Type"),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + b" " * 1024)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), timeout=3)
    finally:
        writer.close()


async def test_an_unauthenticated_request_is_answered_without_its_body(service: Service):
    client = await register_client(service, (await service.facility())["fixmedins_code"])
    cases = {
        "SIGNATURE_MISSING": {},
        "GATEWAY_CLIENT_UNKNOWN": tif_headers("gwunknown", client.secret),
        "SIGNATURE_INVALID": tif_headers(client.paasid, client.secret + "x"),
        "TIMESTAMP_OUT_OF_WINDOW": tif_headers(
            client.paasid, client.secret, timestamp=int(time.time()) - 3600
        ),
    }
    for code, headers in cases.items():
        status = await _status_before_the_body(service, headers)
        assert status.startswith(b"HTTP/1.1 401 "), (code, status)


async def test_an_oversized_body_without_headers_is_unauthenticated(service: Service):
    body = io.BytesIO(b"x" * (9 * 1024 * 1024))
    async with service.http.post(service.base_url + PATH, data=body) as resp:
        assert resp.status == 401
        assert (await resp.json())["err_msg"].startswith("[SIGNATURE_MISSING]")


async def test_an_authenticated_oversized_body_is_still_too_large(gw: GatewayClient):
    body = io.BytesIO(b" " * (8 * 1024 * 1024 + 1))
    url = gw.service.base_url + PATH
    async with gw.service.http.post(url, data=body, headers=gw.headers()) as resp:
        assert resp.status == 413
        assert (await resp.json())["err_msg"].startswith("[PAYLOAD_TOO_LARGE]")


class _CountingPool:
    """The real pool, its reads counted."""

    def __init__(self, pool: Any) -> None:
        self.pool, self.reads = pool, 0

    async def fetchrow(self, *args: Any) -> Any:
        self.reads += 1
        return await self.pool.fetchrow(*args)


async def test_an_unknown_paasid_costs_one_database_read(service: Service, settings: Settings):
    client = await register_client(service, (await service.facility())["fixmedins_code"])
    pool = await db.create_pool(settings)
    try:
        counting = _CountingPool(pool)
        clients = GatewayClients(counting, DataProtector(settings.data_key), AuditLog(pool))  # type: ignore[arg-type]
        for _ in range(5):
            assert await clients.key("gwnosuchclient") is None
        assert counting.reads == 1
        for _ in range(3):  # a known client: its key, read once
            key = await clients.key(client.paasid)
            assert key is not None and key.secret == client.secret
        assert counting.reads == 2
    finally:
        await pool.close()


# ------------------------------------------------------------------ files off the event loop


def _many_rows(n: int, prefix: str) -> list[stmtfiles.FileRow]:
    return [
        stmtfiles.FileRow(f"{prefix}{i:07d}", f"M{i:07d}", f"P{i:07d}", 1000 + i, 500, 0, "0")
        for i in range(n)
    ]


async def _longest_stall(work: Awaitable[Any]) -> tuple[Any, float]:
    """``work``'s result and the longest time the event loop (the service's and the
    test's: one loop) went without running a 10 ms ticker meanwhile."""
    task = asyncio.ensure_future(work)
    longest, last = 0.0, time.monotonic()
    while not task.done():
        await asyncio.sleep(0.01)
        now = time.monotonic()
        longest, last = max(longest, now - last), now
    return task.result(), longest


async def test_a_large_file_is_read_and_compared_off_the_event_loop(service: Service):
    gw = await gateway_client(service)
    data = stmtfiles.upload_zip(_many_rows(stmtfiles.MAX_ROWS, "LOOP"))
    upload, stall = await _longest_stall(_ok_large(gw, gw.envelope("9101", _upload_in(gw, data))))
    assert stall < 1.0, f"the event loop stalled {stall:.2f} s during 9101"
    answer, stall = await _longest_stall(gw.call("3202", _detail(upload["file_qury_no"])))
    assert answer.infcode == 0, answer.body
    assert answer.body["output"]["fileinfo"]["stmt_rslt"] == "1"  # none of them is ours
    assert stall < 1.0, f"the event loop stalled {stall:.2f} s during 3202"


async def test_one_file_message_of_a_facility_at_a_time(service: Service):
    gw = await gateway_client(service)
    other = await gateway_client(service)
    data = stmtfiles.upload_zip(_many_rows(stmtfiles.MAX_ROWS, "B"))
    big = asyncio.ensure_future(_ok_large(gw, gw.envelope("9101", _upload_in(gw, data))))
    await asyncio.sleep(1.0)  # the big file is being read (seconds of work)
    assert not big.done()
    small = gw.envelope("9101", _upload_in(gw, stmtfiles.upload_zip(_many_rows(1, "S"))))
    busy = await gw.post(small)
    assert (busy.status, busy.infcode, busy.code) == (200, -1, "FILE_JOB_BUSY"), busy.body
    assert "same msgid" in busy.body["err_msg"]
    # another facility's file is not held up
    other_small = _upload_in(other, stmtfiles.upload_zip(_many_rows(1, "O")))
    assert (await other.call("9101", other_small)).infcode == 0
    await big
    # the refusal was not stored: the same message, sent again, is done
    again = await gw.post(small, gw.headers())
    assert again.infcode == 0, again.body
    assert again.body["output"]["filename"] == "stmt.zip"
