"""Reconciliation through the national gateway on real PostgreSQL and hsm_stub: 3201 totals
(balanced and not), 9101 uploads in both encodings, 3202 against a file with a missing and
an extra settlement and a wrong amount, 9102 downloads, files of another facility refused,
bad zips refused. The settlements are made through the native API."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import io
import zipfile
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from cardsvc import db
from cardsvc.audit.services import AuditLog
from cardsvc.clock import business_date
from cardsvc.config import Settings
from cardsvc.national import stmtfiles
from cardsvc.national.filejobs import FileJobs
from cardsvc.national.recon import DetailIn, Message, NationalReconciliation, UploadIn
from cardsvc.reconciliation.services import Reconciliation
from tests.support.api import (
    POLICY_CATALOG,
    Patient,
    Service,
    credit,
    lines,
    patient,
)
from tests.support.gateway import PATH, GatewayClient, gateway_client, new_msgid

pytestmark = pytest.mark.asyncio(loop_scope="session")


def gw_upload_in(gw: GatewayClient, data: bytes, *, as_array: bool = False) -> dict[str, Any]:
    encoded: Any = list(data) if as_array else base64.b64encode(data).decode()
    return {
        "fsUploadIn": {"in": encoded, "filename": "stmt.zip", "fixmedins_code": gw.fixmedins_code}
    }


async def send_9101(gw: GatewayClient, data: bytes, *, as_array: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = await gw.ok("9101", gw_upload_in(gw, data, as_array=as_array))
    return out


async def fetch_9102(gw: GatewayClient, file_qury_no: str, filename: str) -> bytes:
    """9102: the zip itself as the HTTP body."""
    node = {"file_qury_no": file_qury_no, "filename": filename, "fixmedins_code": gw.fixmedins_code}
    body = msgspec.json.encode(gw.envelope("9102", {"fsDownloadIn": node}))
    async with gw.service.http.post(
        gw.service.base_url + PATH, data=body, headers=gw.headers()
    ) as resp:
        assert resp.status == 200 and resp.content_type == "application/zip", await resp.text()
        assert resp.headers.get("Content-Disposition") == "attachment"
        return await resp.read()


async def refused(gw: GatewayClient, infno: str, inputs: dict[str, Any]) -> str | None:
    """The stable code of a refusal."""
    answer = await gw.call(infno, inputs)
    assert answer.status == 200 and answer.infcode == -1, answer.body
    assert answer.body["output"] == {}
    return answer.code


@dataclass
class World:
    service: Service
    gw: GatewayClient
    other: GatewayClient  # another facility's HIS
    settled: list[dict[str, Any]]  # three settlements of gw's facility today, 310
    reversed_: dict[str, Any]  # one more, reversed
    patient: Patient


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(service: Service) -> World:
    await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})
    facility = await service.facility()
    other = await service.facility()
    pos = await service.terminal("pos", facility["fixmedins_code"])
    counter = await service.terminal("counter")
    p = await patient(service, pos, counter, balance=0)
    await credit(service, p.psn_no, 1000)
    settled = [
        await p.settle("310", "11", lines(("A-AMOX", 12000, 1))),
        await p.settle("310", "11", lines(("B-CEF", 1800, 2), ("C-VIT", 3000, 1))),
        await p.settle("310", "11", lines(("A-AMOX", 500, 3))),
    ]
    reversed_ = await p.settle("310", "11", lines(("A-AMOX", 700, 1)))
    await pos.call("POST", f"/v1/settlements/{reversed_['setl_id']}/reverse")
    return World(
        service,
        await gateway_client(service, facility["fixmedins_code"]),
        await gateway_client(service, other["fixmedins_code"]),
        settled,
        reversed_,
        p,
    )


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def totals(settled: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "medfee_sumamt": yuan(sum(s["medfee_sumamt"] for s in settled)),
        "fund_pay_sumamt": yuan(sum(s["fund_pay_sumamt"] for s in settled)),
        "acct_pay": yuan(sum(s["acct_pay"] for s in settled)),
        "fixmedins_setl_cnt": len(settled),
    }


def statement(**figures: Any) -> dict[str, Any]:
    today = business_date().isoformat()
    data = {
        "insutype": "310",
        "clr_type": "11",
        "setl_optins": "320200",
        "stmt_begndate": today,
        "stmt_enddate": today,
        **figures,
    }
    return {"data": data}


async def test_3201_balanced(world: World):
    out = await world.gw.ok("3201", statement(**totals(world.settled)))
    info = out["stmtinfo"]
    assert info["stmt_rslt"] == "0", info
    assert info["setl_optins"] == "320200"
    medfee = yuan(sum(s["medfee_sumamt"] for s in world.settled))
    assert f"3 settlements, medfee_sumamt {medfee}" in info["stmt_rslt_dscr"]


async def test_3201_amounts_as_numbers_and_strings(world: World):
    figures = totals(world.settled)
    figures["medfee_sumamt"] = float(figures["medfee_sumamt"])  # a JSON number
    figures["fixmedins_setl_cnt"] = "3"
    out = await world.gw.ok("3201", statement(**figures))
    assert out["stmtinfo"]["stmt_rslt"] == "0"


async def test_3201_unbalanced_says_what_differs(world: World):
    figures = totals(world.settled)
    figures["medfee_sumamt"] = yuan(sum(s["medfee_sumamt"] for s in world.settled) + 1)
    info = (await world.gw.ok("3201", statement(**figures)))["stmtinfo"]
    assert info["stmt_rslt"] == "1"
    assert "differs: medfee_sumamt" in info["stmt_rslt_dscr"]
    # the reversed settlement counted by the facility: one settlement too many
    figures = totals([*world.settled, world.reversed_])
    info = (await world.gw.ok("3201", statement(**figures)))["stmtinfo"]
    assert info["stmt_rslt"] == "1" and "fixmedins_setl_cnt" in info["stmt_rslt_dscr"]


async def test_3201_refusals(world: World):
    figures = totals(world.settled)
    assert (
        await refused(world.gw, "3201", statement(**{**figures, "acct_pay": "1.001"}))
        == "AMOUNT_INVALID"
    )
    long = statement(**figures)
    long["data"]["stmt_begndate"] = "2025-01-01"
    long["data"]["stmt_enddate"] = "2026-06-30"
    assert await refused(world.gw, "3201", long) == "INVALID_DATES"
    assert await refused(world.gw, "3201", statement(**{**figures, "insutype": "999"})) == (
        "INPUT_INVALID"
    )
    assert await refused(world.gw, "3201", {"nodata": {}}) == "INPUT_INVALID"
    fraction = {**figures, "fixmedins_setl_cnt": "2.5"}
    assert await refused(world.gw, "3201", statement(**fraction)) == "INPUT_INVALID"


def file_row(s: dict[str, Any], **changes: Any) -> stmtfiles.FileRow:
    fields = {
        "setl_id": s["setl_id"],
        "mdtrt_id": s["mdtrt_id"],
        "psn_no": s["psn_no"],
        "medfee_sumamt": s["medfee_sumamt"],
        "fund_pay_sumamt": s["fund_pay_sumamt"],
        "acct_pay": s["acct_pay"],
        "refd_setl_flag": "0",
    }
    fields.update(changes)
    return stmtfiles.FileRow(**fields)


@pytest.mark.parametrize("as_array", [False, True], ids=["base64", "array"])
async def test_9101_upload_and_9102_round_trip(world: World, as_array: bool):
    data = stmtfiles.upload_zip([file_row(s) for s in world.settled])
    out = await send_9101(world.gw, data, as_array=as_array)
    assert out["filename"] == "stmt.zip"
    assert out["file_qury_no"]
    end = dt.datetime.strptime(out["dld_endtime"], "%Y-%m-%d %H:%M:%S")
    assert end > dt.datetime.now()
    assert await fetch_9102(world.gw, out["file_qury_no"], "stmt.zip") == data


def result_lines(data: bytes) -> dict[str, list[str]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["result.txt"]
        text = archive.read("result.txt").decode()
    rows = [line.split("\t") for line in text.splitlines()]
    assert all(len(r) == 10 for r in rows), rows
    return {r[2]: r for r in rows}


async def test_3202_missing_extra_and_mismatching(world: World):
    first, second, third = world.settled
    rows = [
        file_row(first),  # agrees
        file_row(second, medfee_sumamt=second["medfee_sumamt"] + 100),  # amount differs
        file_row(first, setl_id="S20990101ffffffffffffffffffff"),  # unknown to cardsvc
        file_row(world.reversed_, refd_setl_flag="1"),  # reversed on both sides
        # third: missing from the facility's file
    ]
    upload = await send_9101(world.gw, stmtfiles.upload_zip(rows))
    today = business_date().isoformat()
    header = {
        "setl_optins": "320200",
        "file_qury_no": upload["file_qury_no"],
        "stmt_begndate": today,
        "stmt_enddate": today,
        "medfee_sumamt": yuan(sum(s["medfee_sumamt"] for s in world.settled)),
        "fund_pay_sumamt": yuan(sum(s["fund_pay_sumamt"] for s in world.settled)),
        "cash_payamt": yuan(sum(s["psn_cash_pay"] for s in world.settled)),
        "fixmedins_setl_cnt": 3,
    }
    info = (await world.gw.ok("3202", {"data": header}))["fileinfo"]
    assert info["file_qury_no"] != upload["file_qury_no"]
    assert info["stmt_rslt"] == "1"
    assert "header totals differ" not in info["stmt_rslt_dscr"]  # the header is cardsvc's
    result = result_lines(await fetch_9102(world.gw, info["file_qury_no"], info["filename"]))
    assert set(result) == {
        first["setl_id"],
        second["setl_id"],
        third["setl_id"],
        world.reversed_["setl_id"],
        "S20990101ffffffffffffffffffff",
    }
    ok = result[first["setl_id"]]
    assert ok == [
        first["psn_no"],
        first["mdtrt_id"],
        first["setl_id"],
        "",  # a settlement of the native API has no msgid
        "0",
        "0",
        "",
        yuan(first["medfee_sumamt"]),
        yuan(first["fund_pay_sumamt"]),
        yuan(first["acct_pay"]),
    ]
    wrong = result[second["setl_id"]]
    assert wrong[4] == "1"
    medfee = second["medfee_sumamt"]
    assert wrong[6] == f"medfee_sumamt: facility {yuan(medfee + 100)}, cardsvc {yuan(medfee)}"
    assert result[third["setl_id"]][4:7] == ["1", "0", "not in the facility's file"]
    extra = result["S20990101ffffffffffffffffffff"]
    assert extra[4] == "1" and "unknown to cardsvc" in extra[6]
    assert result[world.reversed_["setl_id"]][4:7] == ["0", "1", ""]


async def test_3202_header_totals_checked(world: World):
    rows = [file_row(s) for s in world.settled]
    rows.append(file_row(world.reversed_, refd_setl_flag="1"))  # listed, flagged
    upload = await send_9101(world.gw, stmtfiles.upload_zip(rows))
    today = business_date().isoformat()
    header = {
        "file_qury_no": upload["file_qury_no"],
        "stmt_begndate": today,
        "stmt_enddate": today,
        "medfee_sumamt": yuan(sum(s["medfee_sumamt"] for s in world.settled)),
        "fund_pay_sumamt": yuan(sum(s["fund_pay_sumamt"] for s in world.settled)),
        "cash_payamt": yuan(sum(s["psn_cash_pay"] for s in world.settled)),
        "fixmedins_setl_cnt": 3,
    }
    info = (await world.gw.ok("3202", {"data": header}))["fileinfo"]
    assert info["stmt_rslt"] == "0", info
    result = result_lines(await fetch_9102(world.gw, info["file_qury_no"], info["filename"]))
    assert [r[4] for r in result.values()] == ["0"] * 4  # three settled, one reversed
    assert result[world.reversed_["setl_id"]][5] == "1"
    header["cash_payamt"] = "0.01"
    header["fixmedins_setl_cnt"] = 4
    info = (await world.gw.ok("3202", {"data": header}))["fileinfo"]
    assert info["stmt_rslt"] == "1"
    assert "cash_payamt: facility 0.01" in info["stmt_rslt_dscr"]
    assert "fixmedins_setl_cnt: facility 4, cardsvc 3" in info["stmt_rslt_dscr"]


async def test_another_facilitys_file_is_refused(world: World):
    upload = await send_9101(world.gw, stmtfiles.upload_zip([file_row(world.settled[0])]))
    no = upload["file_qury_no"]
    download = {
        "file_qury_no": no,
        "filename": "stmt.zip",
        "fixmedins_code": world.other.fixmedins_code,
    }
    assert await refused(world.other, "9102", {"fsDownloadIn": download}) == "FILE_NOT_FOUND"
    today = business_date().isoformat()
    header = {
        "file_qury_no": no,
        "stmt_begndate": today,
        "stmt_enddate": today,
        "medfee_sumamt": 0,
        "fund_pay_sumamt": 0,
        "cash_payamt": 0,
        "fixmedins_setl_cnt": 0,
    }
    assert await refused(world.other, "3202", {"data": header}) == "FILE_NOT_FOUND"
    # naming the other facility in the input node
    theirs = {**download, "fixmedins_code": world.gw.fixmedins_code}
    assert await refused(world.other, "9102", {"fsDownloadIn": theirs}) == "NOT_OWN_FACILITY"
    upload_in = {
        "in": "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==",
        "filename": "a.zip",
        "fixmedins_code": world.gw.fixmedins_code,
    }
    assert await refused(world.other, "9101", {"fsUploadIn": upload_in}) == "NOT_OWN_FACILITY"
    # the owner: the file, but only under its name
    assert await fetch_9102(world.gw, no, "stmt.zip")
    wrong_name = {**download, "fixmedins_code": world.gw.fixmedins_code, "filename": "x.zip"}
    assert await refused(world.gw, "9102", {"fsDownloadIn": wrong_name}) == "FILE_NOT_FOUND"


def zip_of(*members: tuple[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members:
            archive.writestr(name, content)
    return out.getvalue()


GOOD = b"S1\tMD1\tP1\t10\t6\t1\t0\n"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"plain text, no zip", "FILE_INVALID"),
        (zip_of(("a.txt", GOOD), ("b.txt", GOOD)), "FILE_INVALID"),
        (zip_of(("../../etc/a.txt", GOOD)), "FILE_INVALID"),
        (zip_of(("/tmp/a.txt", GOOD)), "FILE_INVALID"),
        (zip_of(("a.txt", b"S1\tMD1\n")), "FILE_INVALID"),
        (zip_of(("a.txt", b"S1\tMD1\tP1\t10.001\t6\t1\t0\n")), "AMOUNT_INVALID"),
        # a zip bomb: 40 MB of zeros in a few kB, over the text bound
        (zip_of(("a.txt", bytes(40 * 1024 * 1024))), "FILE_TOO_LARGE"),
    ],
    ids=["not-zip", "two-members", "parent-path", "absolute-path", "columns", "decimals", "bomb"],
)
async def test_bad_zips_are_refused(world: World, data: bytes, code: str):
    upload_in = {
        "in": base64.b64encode(data).decode(),
        "filename": "stmt.zip",
        "fixmedins_code": world.gw.fixmedins_code,
    }
    assert await refused(world.gw, "9101", {"fsUploadIn": upload_in}) == code


async def test_bad_upload_nodes_are_refused(world: World):
    code = world.gw.fixmedins_code
    for upload_in in (
        {"in": "not base64!", "filename": "a.zip", "fixmedins_code": code},
        {"in": [1, 256], "filename": "a.zip", "fixmedins_code": code},
        {"in": [], "fixmedins_code": code},
    ):
        assert await refused(world.gw, "9101", {"fsUploadIn": upload_in}) == "INPUT_INVALID"
    bad_name = {"in": list(zip_of(("a.txt", GOOD))), "filename": "../a.zip", "fixmedins_code": code}
    assert await refused(world.gw, "9101", {"fsUploadIn": bad_name}) == "FILE_INVALID"


async def test_3202_refuses_a_result_file_and_a_long_period(world: World):
    upload = await send_9101(world.gw, stmtfiles.upload_zip([file_row(world.settled[0])]))
    today = business_date()
    header = {
        "file_qury_no": upload["file_qury_no"],
        "stmt_begndate": (today - dt.timedelta(days=40)).isoformat(),
        "stmt_enddate": today.isoformat(),
        "medfee_sumamt": 0,
        "fund_pay_sumamt": 0,
        "cash_payamt": 0,
        "fixmedins_setl_cnt": 0,
    }
    assert await refused(world.gw, "3202", {"data": header}) == "INVALID_DATES"
    header["stmt_begndate"] = today.isoformat()
    info = (await world.gw.ok("3202", {"data": header}))["fileinfo"]
    header["file_qury_no"] = info["file_qury_no"]
    assert await refused(world.gw, "3202", {"data": header}) == "FILE_INVALID"
    header["file_qury_no"] = "Fnosuchfile"
    assert await refused(world.gw, "3202", {"data": header}) == "FILE_NOT_FOUND"


async def test_a_message_run_twice_makes_one_file(world: World, settings: Settings):
    """The core stores a message's answer after its handler; a crash in between runs the
    handler again under the same msgid: it finds the file it made, answers the same."""
    pool = await db.create_pool(settings)
    try:
        recon = NationalReconciliation(pool, AuditLog(pool), Reconciliation(pool), FileJobs())
        msg = Message(
            fixmedins_code=world.gw.fixmedins_code,
            msgid=new_msgid(world.gw.fixmedins_code),
            actor="gateway:test",
            opter="001",
            opter_name="收费员",
            now=dt.datetime.now(dt.UTC),
        )
        data = stmtfiles.upload_zip([file_row(world.settled[0])])
        upload = UploadIn(in_=data, filename="a.zip", fixmedins_code=msg.fixmedins_code)
        first = await recon.upload(msg, upload)
        assert await recon.upload(msg, upload) == first
        today = business_date()
        detail = DetailIn(
            file_qury_no=first.file_qury_no,
            stmt_begndate=today,
            stmt_enddate=today,
            medfee_sumamt=Decimal(0),
            fund_pay_sumamt=Decimal(0),
            cash_payamt=Decimal(0),
            fixmedins_setl_cnt=Decimal(0),
        )
        detail_msg = dataclasses.replace(msg, msgid=new_msgid(world.gw.fixmedins_code))
        result = await recon.detail(detail_msg, detail)
        assert await recon.detail(detail_msg, detail) == result
        for made_by in (msg, detail_msg):
            made = await pool.fetchval(
                "SELECT count(*) FROM national_files WHERE fixmedins_code = $1 AND msgid = $2",
                made_by.fixmedins_code,
                made_by.msgid,
            )
            assert made == 1
    finally:
        await pool.close()
