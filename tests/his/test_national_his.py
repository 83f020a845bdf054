"""An HIS settles with cardsvc through the national gateway, end to end: the client
(``tests/his/client.py``) is written from the gateway's contract alone; the stack is the
session's real service, PostgreSQL and hsm_stub. Administrative setup (facilities, persons,
cards, gateway clients) goes through the native admin API; the card component is a POS
terminal of the facility authenticating a card, as ``read-card --busi`` does.

Every settled figure is checked against the native API's ``POST /v1/settlements/preview``
for the same claim (the same person, the same lines in fen, just before) or against the
policy's worked examples, to the fen."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from cardsvc.terminal_sdk.client import TerminalClient
from tests.his.client import (
    SETL_FEN_FIELDS,
    GatewayClient,
    His,
    Line,
    business_date,
    check,
    fen_line,
    local_time,
    result_rows,
    statement_zip,
    tif_headers,
    to_fen,
)
from tests.support.api import (
    POLICY_CATALOG,
    IssuedCard,
    Service,
    authenticate_card,
    credit,
    issue_card,
    unique_code,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")  # the contract's times

D = Decimal


# ---------------------------------------------------------------------- the world
@dataclass
class Desk:
    """One facility as its HIS sees it: the gateway client, and the card component (a POS
    terminal of the facility, authenticating cards for ``busi_card_info``)."""

    service: Service
    fixmedins_code: str
    his: His
    pos: TerminalClient
    registration: dict[str, Any]


@dataclass
class Holder:
    person: dict[str, Any]
    card: IssuedCard

    @property
    def psn_no(self) -> str:
        return str(self.person["psn_no"])


@dataclass
class World:
    service: Service
    counter: TerminalClient
    level1: Desk
    level2: Desk
    level3: Desk
    pharmacy: Desk

    async def holder(
        self,
        *,
        psn_type: str = "in_service",
        insutypes: tuple[str, ...] = ("310",),
        balance: int = 0,
        gend: str = "1",
    ) -> Holder:
        person = await self.service.person(psn_type=psn_type, insutypes=insutypes, gend=gend)
        if balance:
            await credit(self.service, person["psn_no"], balance)
        return Holder(person, await issue_card(self.counter, person["psn_no"]))


async def gateway_client(service: Service, fixmedins_code: str) -> dict[str, Any]:
    status, body = await service.admin(
        "POST", "/v1/gateway-clients", {"fixmedins_code": fixmedins_code}
    )
    assert status == 201, (status, body)
    assert body["fixmedins_code"] == fixmedins_code and body["paasid"] and body["secret"]
    return dict(body)


async def desk(service: Service, **facility: Any) -> Desk:
    registered = await service.facility(**facility)
    code = registered["fixmedins_code"]
    reg = await gateway_client(service, code)
    his = His(
        service.http,
        service.base_url,
        GatewayClient(reg["paasid"], reg["secret"], code),
        fixmedins_name=registered.get("fixmedins_name", "测试医院"),
    )
    await his.sign_in()
    return Desk(service, code, his, await service.terminal("pos", code), reg)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(service: Service) -> World:
    await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})
    return World(
        service,
        await service.terminal("counter"),
        level1=await desk(service, level="1"),
        level2=await desk(service, level="2"),
        level3=await desk(service, level="3"),
        pharmacy=await desk(service, type="pharmacy", level=None, agreements=["310", "410"]),
    )


# ---------------------------------------------------------------------- the HIS's steps
async def busi_card_info(desk: Desk, holder: Holder, purpose: str) -> str:
    """``mdtrt_cert_no`` for ``03``: card_no|card token of this facility's card component."""
    auth = await authenticate_card(desk.pos, holder.card, purpose)
    return f"{holder.card.card_no}|{auth['card_token']}"


def cert(desk_cert_no: str, holder: Holder) -> dict[str, str]:
    return {"mdtrt_cert_type": "03", "mdtrt_cert_no": desk_cert_no, "card_sn": holder.card.card_sn}


async def person_info(desk: Desk, holder: Holder) -> dict[str, Any]:
    """1101 with the card (identify: no PIN)."""
    cert_no = await busi_card_info(desk, holder, "identify")
    return await desk.his.ok(
        "1101",
        {
            "data": {
                **cert(cert_no, holder),
                "begntime": local_time(),
                "psn_cert_type": "",
                "certno": "",
                "psn_name": "",
            }
        },
    )


async def register(
    desk: Desk, holder: Holder, insutype: str, exp_content: Any = None
) -> str:  # 2201
    cert_no = await busi_card_info(desk, holder, "identify")
    data: dict[str, Any] = {
        "psn_no": holder.psn_no,
        "insutype": insutype,
        "begntime": local_time(),
        **cert(cert_no, holder),
        "ipt_otp_no": unique_code("OP"),
        "atddr_no": "D0001",
        "dr_name": "李医生",
        "dept_code": "D01",
        "dept_name": "内科",
        "caty": "A03",
    }
    if exp_content is not None:
        data["exp_content"] = exp_content
    out = await desk.his.ok("2201", {"data": data})
    assert (
        out["data"]["psn_no"] == holder.psn_no and out["data"]["ipt_otp_no"] == data["ipt_otp_no"]
    )
    mdtrt_id = out["data"]["mdtrt_id"]
    assert isinstance(mdtrt_id, str) and 0 < len(mdtrt_id) <= 30
    return mdtrt_id


async def visit_info(
    desk: Desk, holder: Holder, mdtrt_id: str, med_type: str, exp_content: Any = None
) -> None:  # 2203
    info: dict[str, Any] = {
        "mdtrt_id": mdtrt_id,
        "psn_no": holder.psn_no,
        "med_type": med_type,
        "begntime": local_time(),
        "main_cond_dscr": "咳嗽三天",
        "dise_codg": "J06.900",
        "dise_name": "急性上呼吸道感染",
        "birctrl_type": "",
        "matn_type": "",
        "geso_val": 0,
    }
    if exp_content is not None:
        info["exp_content"] = exp_content
    await desk.his.ok(
        "2203",
        {
            "mdtrtinfo": info,
            "diseinfo": [
                {
                    "diag_type": "1",
                    "diag_srt_no": "1",
                    "diag_code": "J06.900",
                    "diag_name": "急性上呼吸道感染",
                    "diag_dept": "内科",
                    "dise_dor_no": "D0001",
                    "dise_dor_name": "李医生",
                    "diag_time": local_time(),
                    "vali_flag": "1",
                }
            ],
        },
    )


async def upload(
    desk: Desk,
    infno: str,
    holder: Holder,
    mdtrt_id: str,
    lines: list[Line],
    chrg_bchno: str = "B1",
    *,
    as_strings: bool = False,
) -> list[dict[str, Any]]:  # 2204 / 2301
    nodes = [
        line.node(mdtrt_id, holder.psn_no, chrg_bchno, as_strings=as_strings) for line in lines
    ]
    out = await desk.his.ok(infno, {"feedetail": nodes})
    result = out["result"]
    assert isinstance(result, list) and len(result) == len(lines), out
    for row in result:
        missing = [name for name in RESULT_FIELDS if name not in row]
        assert not missing, (missing, row)
    return list(result)


def totals(result: list[dict[str, Any]]) -> dict[str, Decimal]:
    """What an HIS sends in 2206/2207 from 2204's per-line split."""
    names = {
        "medfee_sumamt": "det_item_fee_sumamt",
        "fulamt_ownpay_amt": "fulamt_ownpay_amt",
        "overlmt_selfpay": "overlmt_amt",
        "preselfpay_amt": "preselfpay_amt",
        "inscp_scp_amt": "inscp_scp_amt",
    }
    return {
        mine: sum((D(row[theirs]) for row in result), D("0.00")) for mine, theirs in names.items()
    }


def settle_input(
    holder: Holder,
    cert_no: str,
    mdtrt_id: str,
    insutype: str,
    med_type: str,
    medfee_sumamt: Decimal | str,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "data": {
            "psn_no": holder.psn_no,
            **cert(cert_no, holder),
            "med_type": med_type,
            "medfee_sumamt": medfee_sumamt,
            "psn_setlway": "01",
            "mdtrt_id": mdtrt_id,
            "insutype": insutype,
            "acct_used_flag": "1",
            "invono": "",
            **extra,
        }
    }


async def native_preview(
    desk: Desk,
    holder: Holder,
    insutype: str,
    med_type: str,
    lines: list[tuple[str, int, int]],
    **extra: Any,
) -> dict[str, Any]:
    """The same claim through the native API: integer fen lines, a card of the same facility."""
    auth = await authenticate_card(desk.pos, holder.card, "transaction")
    body = {
        "card_token": auth["card_token"],
        "insutype": insutype,
        "med_type": med_type,
        "mdtrt_id": unique_code("NP"),
        "feedetail": [{"code": c, "unit_price": p, "quantity": q} for c, p, q in lines],
        **extra,
    }
    preview: dict[str, Any] = await desk.pos.call("POST", "/v1/settlements/preview", body)
    return preview


ZERO_FIELDS = (
    "cvlserv_pay",
    "hifes_pay",
    "hifmi_pay",
    "hifob_pay",
    "maf_pay",
    "oth_pay",
    "hosp_part_amt",
    "acct_mulaid_pay",
)
SETLDETAIL_FIELDS = (
    "fund_pay_type",
    "inscp_scp_amt",
    "crt_payb_lmt_amt",
    "fund_payamt",
    "fund_pay_type_name",
    "setl_proc_info",
)
RESULT_FIELDS = (
    "feedetl_sn",
    "det_item_fee_sumamt",
    "cnt",
    "pric",
    "pric_uplmt_amt",
    "selfpay_prop",
    "fulamt_ownpay_amt",
    "overlmt_amt",
    "preselfpay_amt",
    "inscp_scp_amt",
    "chrgitm_lv",
)


def assert_same_figures(output: dict[str, Any], native: dict[str, Any]) -> None:
    """The gateway's setlinfo/setldetail in yuan equal the native figures in fen, every one."""
    setlinfo = output["setlinfo"]
    differ = {
        name: (setlinfo.get(name), native[name])
        for name in SETL_FEN_FIELDS
        if name not in setlinfo or to_fen(setlinfo[name]) != native[name]
    }
    assert not differ, f"gateway (yuan) vs native (fen): {differ}"
    funds = {d["fund_pay_type"]: to_fen(d["fund_payamt"]) for d in output["setldetail"]}
    assert funds == {d["fund_pay_type"]: d["fund_payamt"] for d in native["setldetail"]}
    for name in ZERO_FIELDS:  # no scheme in cardsvc: answered, and 0
        assert setlinfo.get(name) == 0, (name, setlinfo.get(name))
    for detail in output["setldetail"]:
        missing = [name for name in SETLDETAIL_FIELDS if name not in detail]
        assert not missing, (missing, detail)
    assert setlinfo["medfee_sumamt"] == (
        setlinfo["fulamt_ownpay_amt"]
        + setlinfo["overlmt_selfpay"]
        + setlinfo["preselfpay_amt"]
        + setlinfo["inscp_scp_amt"]
    )


async def balance(service: Service, psn_no: str) -> int:
    person = await service.admin_ok("GET", f"/v1/persons/{psn_no}")
    return int(person["balc"])


async def outpatient_settlement(
    desk: Desk, holder: Holder, lines: list[Line], insutype: str = "310", **native_extra: Any
) -> dict[str, Any]:
    """2201 → 2203 → 2204 → 2207 (the short way an HIS settles a visit), its figures
    checked against the native preview of the same claim."""
    mdtrt_id = await register(desk, holder, insutype)
    await visit_info(desk, holder, mdtrt_id, "11")
    result = await upload(desk, "2204", holder, mdtrt_id, lines)
    fen_lines = [(line.code, to_fen(line.pric), int(line.cnt)) for line in lines]
    native = await native_preview(desk, holder, insutype, "11", fen_lines, **native_extra)
    cert_no = await busi_card_info(desk, holder, "transaction")
    sums = totals(result)
    settled = await desk.his.ok(
        "2207",
        settle_input(
            holder, cert_no, mdtrt_id, insutype, "11", sums["medfee_sumamt"], chrg_bchno="B1"
        ),
    )
    assert_same_figures(settled, native)
    return settled


# ---------------------------------------------------------------------- sign-in, 1101
async def test_sign_in_sign_out_and_the_sign_no_that_ended(world: World, service: Service):
    mine = await gateway_desk_fresh(service)  # 9002 ends its facility's sign_no: its own desk
    his = mine.his
    holder = await world.holder()
    await person_info(mine, holder)  # the fixture's 9001 sign_no opens transactions
    # A second workstation signs in on its own; its sign-out leaves the first one's alone.
    other = His(his.http, his.base_url, his.client, his.fixmedins_name)
    assert await other.sign_in() != his.sign_no
    await other.sign_out()
    await other.refused("1101", {"data": {}}, "SIGN_NO_INVALID")
    await person_info(mine, holder)
    out = await his.sign_out()
    assert TIME.fullmatch(out["signoutoutb"]["sign_time"]), out
    # After 9002 the sign_no no longer opens anything.
    ended = await his.refused("1101", {"data": {}}, "SIGN_NO_INVALID")
    assert ended.status == 200
    # Missing: no sign_no at all, or an empty one; one never issued.
    unsigned = his.envelope("1101", {"data": {}})
    del unsigned["sign_no"]
    missing = await his.post(unsigned)
    assert missing.infcode == -1 and missing.err_code == "SIGN_NO_INVALID", missing.describe()
    await his.refused("1101", {"data": {}}, "SIGN_NO_INVALID", sign_no="")
    await his.refused("1101", {"data": {}}, "SIGN_NO_INVALID", sign_no="S" + "0" * 19)
    # Another facility's sign_no is not this facility's.
    await his.refused("1101", {"data": {}}, "SIGN_NO_INVALID", sign_no=world.level3.his.sign_no)
    # Signing in again opens transactions again.
    await his.sign_in()
    await person_info(mine, holder)


async def test_1101_person_information_with_the_card(world: World):
    desk = world.level2
    holder = await world.holder(balance=12345)
    out = await person_info(desk, holder)
    base = out["baseinfo"]
    assert base["psn_no"] == holder.psn_no and base["psn_name"] == "张三"
    assert base["gend"] == "1"
    certno = holder.person["certno_full"]
    assert base["certno"] != certno
    assert certno not in json.dumps(out, default=str)  # nowhere in the answer
    # Nothing rebuilds it: the birth date is not answered whole (it is digits 7-14).
    assert certno[6:14] not in json.dumps(out, default=str).replace("-", "")
    for name in ("psn_no", "psn_cert_type", "certno", "psn_name", "gend", "naty", "brdy", "age"):
        assert name in base, (name, base)
    insu_fields = (
        "balc",
        "insutype",
        "psn_type",
        "psn_insu_stas",
        "psn_insu_date",
        "paus_insu_date",
        "cvlserv_flag",
        "insuplc_admdvs",
        "emp_name",
    )
    for row in out["insuinfo"]:
        assert all(name in row for name in insu_fields), row
    insu = {row["insutype"]: row for row in out["insuinfo"]}
    assert set(insu) == {"310"}
    assert insu["310"]["balc"] == D("123.45") and insu["310"]["psn_type"]
    assert isinstance(out["idetinfo"], list)

    # card_sn as the reader component prints it (upper-case hex) names the same card.
    cert_no = await busi_card_info(desk, holder, "identify")
    upper = {**cert(cert_no, holder), "card_sn": holder.card.card_sn.upper()}
    out = await desk.his.ok("1101", {"data": {**upper, "begntime": local_time()}})
    assert out["baseinfo"]["psn_no"] == holder.psn_no


# ---------------------------------------------------------------------- outpatient
async def test_outpatient_visit_2201_2203_2204_2206_2207_2208(world: World):
    desk, service = world.level2, world.service
    holder = await world.holder(balance=20000)
    info = await person_info(desk, holder)
    assert info["baseinfo"]["psn_no"] == holder.psn_no

    mdtrt_id = await register(desk, holder, "310")
    await visit_info(desk, holder, mdtrt_id, "11")
    lines = [
        fen_line("A-AMOX", 1200, 2),
        Line("B-CEF", D("18.50"), D("2")),
        # A fractional count: 3.333333 × 1.5 = 4.9999995 → ¥5.00 (class C, all own pay).
        Line("C-VIT", D("3.333333"), D("1.5000"), sumamt=D("5.00")),
    ]
    result = await upload(desk, "2204", holder, mdtrt_id, lines[:1])
    result += await upload(desk, "2204", holder, mdtrt_id, lines[1:], as_strings=True)
    by_sn = {row["feedetl_sn"]: row for row in result}
    amox, cef, vit = (by_sn[line.feedetl_sn] for line in lines)
    assert amox["det_item_fee_sumamt"] == D("24.00") and amox["inscp_scp_amt"] == D("24.00")
    assert cef["selfpay_prop"] == D("0.1") and cef["preselfpay_amt"] == D("3.70")
    assert cef["inscp_scp_amt"] == D("33.30") and cef["overlmt_amt"] == 0
    assert vit["fulamt_ownpay_amt"] == D("5.00") and vit["cnt"] == D("1.5")
    assert vit["pric"] == D("3.333333")
    sums = totals(result)
    assert sums["medfee_sumamt"] == D("66.00")

    # The same claim through the native API, in fen.
    native = await native_preview(
        desk, holder, "310", "11", [("A-AMOX", 1200, 2), ("B-CEF", 1850, 2), ("C-VIT", 500, 1)]
    )
    identify = await busi_card_info(desk, holder, "identify")
    pre_input = settle_input(
        holder, identify, mdtrt_id, "310", "11", sums["medfee_sumamt"], chrg_bchno="B1"
    )
    pre = await desk.his.ok("2206", pre_input)
    assert_same_figures(pre, native)
    assert not pre["setlinfo"].get("setl_id")
    assert await balance(service, holder.psn_no) == 20000  # 2206 writes nothing

    # 2207 refuses an identify token (no PIN) and an identity number; then settles.
    await desk.his.refused(
        "2207",
        settle_input(holder, identify, mdtrt_id, "310", "11", "66.00", chrg_bchno="B1"),
        "CARD_TOKEN_PURPOSE",
    )
    by_certno = settle_input(holder, "x", mdtrt_id, "310", "11", "66.00", chrg_bchno="B1")
    by_certno["data"].update(mdtrt_cert_type="02", mdtrt_cert_no=holder.person["certno_full"])
    await desk.his.refused("2207", by_certno, "CERT_TYPE_NOT_ALLOWED")
    txn = await busi_card_info(desk, holder, "transaction")
    await desk.his.refused(
        "2207",
        settle_input(holder, txn, mdtrt_id, "310", "11", "66.01", chrg_bchno="B1"),
        "FEE_SUM_MISMATCH",
    )
    settle_env = desk.his.envelope(
        "2207", settle_input(holder, txn, mdtrt_id, "310", "11", "66.00", chrg_bchno="B1")
    )
    answer = await desk.his.post(settle_env)
    assert answer.infcode == 0, answer.describe()
    check(answer)
    settled = answer.output
    assert_same_figures(settled, native)
    setlinfo = settled["setlinfo"]
    assert setlinfo["setl_id"] and setlinfo["mdtrt_id"] == mdtrt_id
    assert setlinfo["psn_no"] == holder.psn_no
    assert setlinfo["medins_setl_id"] == settle_env["msgid"]
    assert await balance(service, holder.psn_no) == 20000 - to_fen(setlinfo["acct_pay"])

    # Exactly once: the same message again gets the stored answer, unchanged.
    again = await desk.his.post(settle_env)
    assert again.body == answer.body
    # Settled lines are not settled twice.
    nothing_left = settle_input(holder, txn, mdtrt_id, "310", "11", "66.00", chrg_bchno="B1")
    assert (await desk.his.call("2207", nothing_left)).infcode == -1

    # 2208: the reversal, amounts given back as positive figures.
    cancel = await desk.his.ok(
        "2208",
        {"data": {"setl_id": setlinfo["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": holder.psn_no}},
    )
    back = cancel["setlinfo"]
    for name in ("medfee_sumamt", "acct_pay", "fund_pay_sumamt", "psn_cash_pay"):
        assert back[name] == setlinfo[name] and back[name] >= 0, (name, back[name])
    funds = {d["fund_pay_type"]: d["fund_payamt"] for d in cancel["setldetail"]}
    assert funds == {d["fund_pay_type"]: d["fund_payamt"] for d in settled["setldetail"]}
    assert await balance(service, holder.psn_no) == 20000


async def test_pharmacy_purchase_opens_its_visit_with_2204(world: World):
    """POLICY's E3: 310 in_service at a pharmacy, balance ¥100."""
    desk = world.pharmacy
    holder = await world.holder(balance=10000)
    await person_info(desk, holder)
    mdtrt_id = unique_code("PH")  # chosen by the pharmacy, no 2201
    lines = [fen_line("B-CEF", 1800, 3), fen_line("C-VIT", 2000, 1)]
    result = await upload(desk, "2204", holder, mdtrt_id, lines)
    native = await native_preview(
        desk, holder, "310", "41", [("B-CEF", 1800, 3), ("C-VIT", 2000, 1)]
    )
    txn = await busi_card_info(desk, holder, "transaction")
    out = await desk.his.ok(
        "2207",
        settle_input(
            holder, txn, mdtrt_id, "310", "41", totals(result)["medfee_sumamt"], chrg_bchno="B1"
        ),
    )
    assert_same_figures(out, native)
    s = out["setlinfo"]
    assert (s["medfee_sumamt"], s["fulamt_ownpay_amt"], s["preselfpay_amt"]) == (
        D("74.00"),
        D("20.00"),
        D("5.40"),
    )
    assert (s["inscp_scp_amt"], s["hifp_pay"], s["acct_pay"]) == (D("48.60"), 0, D("54.00"))
    assert (s["psn_cash_pay"], s["balc"]) == (D("20.00"), D("46.00"))
    assert out["setldetail"] == []


# ---------------------------------------------------------------------- inpatient
async def admit(
    desk: Desk, holder: Holder, insutype: str, med_type: str, exp_content: Any = None
) -> str:  # 2401
    cert_no = await busi_card_info(desk, holder, "identify")
    info: dict[str, Any] = {
        "psn_no": holder.psn_no,
        "insutype": insutype,
        "begntime": local_time(),
        **cert(cert_no, holder),
        "med_type": med_type,
        "ipt_no": unique_code("IP"),
        "medrcdno": unique_code("MR"),
        "atddr_no": "D0002",
        "chfpdr_name": "王医生",
        "adm_diag_dscr": "入院",
        "adm_dept_codg": "D02",
        "adm_dept_name": "外科",
        "adm_bed": "12",
        "dscg_maindiag_code": "K35.900",
        "dscg_maindiag_name": "急性阑尾炎",
        "main_cond_dscr": "",
        "dise_codg": "K35.900",
        "dise_name": "急性阑尾炎",
        "oprn_oprt_code": "",
        "oprn_oprt_name": "",
        "fpsc_no": "",
        "matn_type": "",
        "birctrl_type": "",
        "latechb_flag": "0",
        "geso_val": 0,
        "fetts": 0,
        "fetus_cnt": 0,
        "pret_flag": "0",
        "birctrl_matn_date": "",
        "dise_type_code": "",
    }
    if exp_content is not None:
        info["exp_content"] = exp_content
    out = await desk.his.ok(
        "2401",
        {
            "mdtrtinfo": info,
            "diseinfo": [
                {
                    "psn_no": holder.psn_no,
                    "diag_type": "1",
                    "maindiag_flag": "1",
                    "diag_srt_no": "1",
                    "diag_code": "K35.900",
                    "diag_name": "急性阑尾炎",
                    "adm_cond": "",
                    "diag_dept": "外科",
                    "dise_dor_no": "D0002",
                    "dise_dor_name": "王医生",
                    "diag_time": local_time(),
                }
            ],
        },
    )
    mdtrt_id = out["result"]["mdtrt_id"]
    assert isinstance(mdtrt_id, str) and mdtrt_id
    return mdtrt_id


async def discharge(desk: Desk, holder: Holder, mdtrt_id: str, insutype: str) -> None:  # 2402
    await desk.his.ok(
        "2402",
        {
            "dscginfo": {
                "mdtrt_id": mdtrt_id,
                "psn_no": holder.psn_no,
                "insutype": insutype,
                "endtime": local_time(),
                "dise_codg": "K35.900",
                "dise_name": "急性阑尾炎",
                "oprn_oprt_code": "",
                "oprn_oprt_name": "",
                "fpsc_no": "",
                "matn_type": "",
                "birctrl_type": "",
                "latechb_flag": "0",
                "geso_val": 0,
                "fetts": 0,
                "fetus_cnt": 0,
                "pret_flag": "0",
                "birctrl_matn_date": "",
                "cop_flag": "0",
                "dscg_dept_codg": "D02",
                "dscg_dept_name": "外科",
                "dscg_bed": "12",
                "dscg_way": "1",
                "die_date": "",
            },
            "diseinfo": [],
        },
    )


def stay_input(
    holder: Holder, cert_no: str, mdtrt_id: str, insutype: str, medfee: Decimal, mid: bool
) -> dict[str, Any]:
    data = settle_input(holder, cert_no, mdtrt_id, insutype, "21", medfee)
    data["data"]["mid_setl_flag"] = "1" if mid else "0"
    del data["data"]["med_type"]  # 2303/2304 name no med_type: the stay's
    return data


async def test_inpatient_stay_with_a_refund_line_mid_stay_and_final_settlement(world: World):
    desk, service = world.level3, world.service
    holder = await world.holder(balance=50000)
    mdtrt_id = await admit(desk, holder, "310", "21")

    # Day 1: A-AMOX ¥1,000.00 × 3, C-VIT ¥30.00 — then C-VIT refunded (negative cnt).
    amox, vit = fen_line("A-AMOX", 100000, 3), fen_line("C-VIT", 3000, 1)
    await upload(desk, "2301", holder, mdtrt_id, [amox, vit])
    refund = Line("C-VIT", D("30.00"), D("-1"), init_feedetl_sn=vit.feedetl_sn)
    await upload(desk, "2301", holder, mdtrt_id, [refund])

    # The whole stay as one settlement would be (a fresh year: the first admission).
    day2_lines = [("B-CEF", 2500, 4), ("A-AMOX", 50000, 1)]
    whole = await native_preview(desk, holder, "310", "21", [("A-AMOX", 100000, 3), *day2_lines])
    # Mid-stay settlement of what is unsettled: A-AMOX only.
    native = await native_preview(desk, holder, "310", "21", [("A-AMOX", 100000, 3)])
    identify = await busi_card_info(desk, holder, "identify")
    pre = await desk.his.ok(
        "2303", stay_input(holder, identify, mdtrt_id, "310", D("3000.00"), True)
    )
    assert_same_figures(pre, native)
    await desk.his.refused(
        "2304",
        stay_input(
            holder,
            await busi_card_info(desk, holder, "transaction"),
            mdtrt_id,
            "310",
            D("3030.00"),
            True,
        ),
        "FEE_SUM_MISMATCH",
    )
    await desk.his.refused(
        "2304",
        stay_input(holder, identify, mdtrt_id, "310", D("3000.00"), True),
        "CARD_TOKEN_PURPOSE",
    )
    by_certno = stay_input(holder, identify, mdtrt_id, "310", D("3000.00"), True)
    by_certno["data"].update(mdtrt_cert_type="02", mdtrt_cert_no=holder.person["certno_full"])
    await desk.his.refused("2304", by_certno, "CERT_TYPE_NOT_ALLOWED")
    unknown = Line("A-AMOX", D("1000.00"), D("-1"), init_feedetl_sn="F-NEVER-SENT")
    answer = await desk.his.call(
        "2301", {"feedetail": [unknown.node(mdtrt_id, holder.psn_no, "B1")]}
    )
    assert answer.infcode == -1, answer.describe()  # a refund of a line never uploaded
    txn = await busi_card_info(desk, holder, "transaction")
    mid = await desk.his.ok("2304", stay_input(holder, txn, mdtrt_id, "310", D("3000.00"), True))
    assert_same_figures(mid, native)
    assert mid["setlinfo"]["act_pay_dedc"] == D("800.00")  # level 3, first admission this year

    # Day 2: B-CEF over its price cap, A-AMOX; discharge; final settlement of those two.
    day2 = [fen_line("B-CEF", 2500, 4), fen_line("A-AMOX", 50000, 1)]
    await upload(desk, "2301", holder, mdtrt_id, day2)
    await discharge(desk, holder, mdtrt_id, "310")
    txn = await busi_card_info(desk, holder, "transaction")
    final = await desk.his.ok("2304", stay_input(holder, txn, mdtrt_id, "310", D("600.00"), False))
    # The deductible is per admission: the final settlement takes none (the mid-stay one
    # took it), and the two parts together are the whole stay's settlement, to the fen.
    assert final["setlinfo"]["act_pay_dedc"] == 0
    parts = (mid["setlinfo"], final["setlinfo"])
    for name in SETL_FEN_FIELDS:
        if name != "balc":
            assert sum(to_fen(p[name]) for p in parts) == whole[name], name
    assert to_fen(final["setlinfo"]["balc"]) == whole["balc"]
    assert final["setlinfo"]["overlmt_selfpay"] == D("20.00")
    assert final["setlinfo"]["setl_id"] != mid["setlinfo"]["setl_id"]

    # 2305 cancels the final settlement; the account gets back exactly what it paid.
    before = await balance(service, holder.psn_no)
    await desk.his.ok(
        "2305",
        {
            "data": {
                "mdtrt_id": mdtrt_id,
                "setl_id": final["setlinfo"]["setl_id"],
                "psn_no": holder.psn_no,
            }
        },
    )
    assert await balance(service, holder.psn_no) == before + to_fen(final["setlinfo"]["acct_pay"])


# ---------------------------------------------------------------------- work injury, maternity
async def test_work_injury_case_named_in_exp_content(world: World):
    desk, service = world.level2, world.service
    holder = await world.holder(insutypes=("310", "410"))
    case = await service.admin_ok(
        "POST",
        "/v1/injury-cases",
        {
            "psn_no": holder.psn_no,
            "employer": "无锡某厂",
            "injury_date": "2026-01-01",
            "valid_from": "2026-01-01",
            "valid_to": "2027-12-31",
        },
    )
    mdtrt_id = await register(desk, holder, "410", json.dumps({"injury_case_id": case["case_id"]}))
    await visit_info(desk, holder, mdtrt_id, "11")
    lines = [fen_line("W-SUT", 50000, 2), fen_line("A-AMOX", 3000, 1)]
    await upload(desk, "2204", holder, mdtrt_id, lines)
    native = await native_preview(
        desk,
        holder,
        "410",
        "11",
        [("W-SUT", 50000, 2), ("A-AMOX", 3000, 1)],
        injury_case_id=case["case_id"],
    )
    txn = await busi_card_info(desk, holder, "transaction")
    out = await desk.his.ok(
        "2207", settle_input(holder, txn, mdtrt_id, "410", "11", D("1030.00"), chrg_bchno="B1")
    )
    assert_same_figures(out, native)
    assert [(d["fund_pay_type"], d["fund_payamt"]) for d in out["setldetail"]] == [
        ("410100", D("1000.00"))
    ]
    assert (out["setlinfo"]["fulamt_ownpay_amt"], out["setlinfo"]["psn_cash_pay"]) == (
        D("30.00"),
        D("30.00"),
    )


async def test_work_injury_without_an_approved_case_is_refused(world: World):
    desk = world.level2
    holder = await world.holder(insutypes=("310", "410"))
    # No case at all: the person has no valid approved case to fall back on.
    answer = await desk.his.call(
        "2201",
        {
            "data": {
                "psn_no": holder.psn_no,
                "insutype": "410",
                "begntime": local_time(),
                **cert(await busi_card_info(desk, holder, "identify"), holder),
                "ipt_otp_no": unique_code("OP"),
                "atddr_no": "D0001",
                "dr_name": "李医生",
                "dept_code": "D01",
                "dept_name": "内科",
                "caty": "A03",
            }
        },
    )
    if answer.infcode == -1:  # refused at registration
        assert answer.err_code == "INJURY_CASE_INVALID", answer.describe()
        return
    mdtrt_id = answer.output["data"]["mdtrt_id"]
    await visit_info(desk, holder, mdtrt_id, "11")
    await upload(desk, "2204", holder, mdtrt_id, [fen_line("W-SUT", 50000, 1)])
    txn = await busi_card_info(desk, holder, "transaction")
    await desk.his.refused(
        "2207",
        settle_input(holder, txn, mdtrt_id, "410", "11", D("500.00"), chrg_bchno="B1"),
        "INJURY_CASE_INVALID",
    )


async def test_maternity_delivery_twice_the_second_refused(world: World):
    """POLICY's E6 (cesarean at level 3) as an inpatient stay; the second delivery of the
    year, registered as an outpatient visit (2203 exp_content), is refused MATERNITY_LIMIT."""
    desk = world.level3
    holder = await world.holder(insutypes=("510",), gend="2")
    e6 = [("A-AMOX", 400000, 1), ("B-STENT", 200000, 1), ("C-VIT", 5000, 1)]
    mdtrt_id = await admit(desk, holder, "510", "52", {"delivery_type": "cesarean"})
    await upload(desk, "2301", holder, mdtrt_id, [fen_line(*line) for line in e6])
    await discharge(desk, holder, mdtrt_id, "510")
    native = await native_preview(desk, holder, "510", "52", e6, delivery_type="cesarean")
    txn = await busi_card_info(desk, holder, "transaction")
    out = await desk.his.ok("2304", stay_input(holder, txn, mdtrt_id, "510", D("6050.00"), False))
    assert_same_figures(out, native)
    assert [(d["fund_pay_type"], d["fund_payamt"]) for d in out["setldetail"]] == [
        ("510100", D("5000.00"))
    ]
    assert out["setlinfo"]["psn_cash_pay"] == D("1050.00")

    again = await register(desk, holder, "510")
    await visit_info(desk, holder, again, "52", json.dumps({"delivery_type": "normal"}))
    await upload(desk, "2204", holder, again, [fen_line("A-AMOX", 100000, 1)])
    txn = await busi_card_info(desk, holder, "transaction")
    await desk.his.refused(
        "2207",
        settle_input(holder, txn, again, "510", "52", D("1000.00"), chrg_bchno="B1"),
        "MATERNITY_LIMIT",
    )


# ---------------------------------------------------------------------- 2601
async def test_2601_reverses_a_settlement_whose_answer_was_lost(world: World):
    desk, service = world.level2, world.service
    holder = await world.holder(balance=5000)
    mdtrt_id = await register(desk, holder, "310")
    await visit_info(desk, holder, mdtrt_id, "11")
    await upload(desk, "2204", holder, mdtrt_id, [fen_line("A-AMOX", 3000, 1)])
    txn = await busi_card_info(desk, holder, "transaction")
    lost = desk.his.envelope(
        "2207", settle_input(holder, txn, mdtrt_id, "310", "11", D("30.00"), chrg_bchno="B1")
    )
    await desk.his.post(lost)  # the answer never reaches the HIS: it is not read
    assert await balance(service, holder.psn_no) == 2000  # the account paid ¥30.00

    reverse = {"data": {"psn_no": holder.psn_no, "omsgid": lost["msgid"], "oinfno": "2207"}}
    await desk.his.ok("2601", reverse)
    assert await balance(service, holder.psn_no) == 5000
    await desk.his.ok("2601", reverse)  # idempotent: a second 2601 changes nothing
    assert await balance(service, holder.psn_no) == 5000
    # A message that never arrived did nothing: answered infcode 0.
    never = {"data": {"psn_no": holder.psn_no, "omsgid": desk.his.mint_msgid(), "oinfno": "2207"}}
    await desk.his.ok("2601", never)
    # The lost 2207 sent again is answered as first (exactly once), and pays nothing again.
    replay = await desk.his.post(lost)
    assert replay.infcode == 0 and replay.output["setlinfo"]["acct_pay"] == D("30.00")
    assert await balance(service, holder.psn_no) == 5000


# ---------------------------------------------------------------------- 3201 / 3202
async def test_3201_balanced_and_unbalanced_and_3202_with_a_missing_and_an_extra_settlement(
    world: World, service: Service
):
    desk = await gateway_desk_fresh(service)
    people = [await world.holder(psn_type="resident", insutypes=("390",)) for _ in range(3)]
    claims = [
        [fen_line("A-AMOX", 10000, 1)],
        [fen_line("A-AMOX", 2000, 2), fen_line("C-VIT", 1000, 1)],
        [fen_line("A-AMOX", 7000, 1)],
    ]
    settled = [
        (await outpatient_settlement(desk, holder, lines, "390"))["setlinfo"]
        for holder, lines in zip(people, claims, strict=True)
    ]
    gone = settled[2]
    await desk.his.ok(
        "2208",
        {
            "data": {
                "setl_id": gone["setl_id"],
                "mdtrt_id": gone["mdtrt_id"],
                "psn_no": gone["psn_no"],
            }
        },
    )
    kept = settled[:2]
    sums = {
        name: sum((s[name] for s in kept), D("0.00"))
        for name in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay")
    }
    assert sums["fund_pay_sumamt"] > 0
    today = business_date()

    def stmt(**change: Any) -> dict[str, Any]:
        data = {
            "insutype": "390",
            "clr_type": "11",
            "setl_optins": "320200",
            "stmt_begndate": today,
            "stmt_enddate": today,
            "medfee_sumamt": sums["medfee_sumamt"],
            "fund_pay_sumamt": sums["fund_pay_sumamt"],
            "acct_pay": sums["acct_pay"],
            "fixmedins_setl_cnt": 2,
        }
        return {"data": {**data, **change}}

    balanced = await desk.his.ok("3201", stmt())
    assert balanced["stmtinfo"]["stmt_rslt"] == "0", balanced
    assert balanced["stmtinfo"]["setl_optins"] == "320200"
    unbalanced = await desk.his.ok(
        "3201", stmt(fund_pay_sumamt=str(sums["fund_pay_sumamt"] + D("0.01")))
    )
    assert unbalanced["stmtinfo"]["stmt_rslt"] == "1" and unbalanced["stmtinfo"]["stmt_rslt_dscr"]
    # The description gives cardsvc's figures (yuan), so the facility can see what differs.
    assert str(sums["fund_pay_sumamt"]) in unbalanced["stmtinfo"]["stmt_rslt_dscr"], unbalanced
    counted = await desk.his.ok("3201", stmt(fixmedins_setl_cnt=3))
    assert counted["stmtinfo"]["stmt_rslt"] == "1"

    # 3202: the facility's file lists the first settlement, misses the second, and has one
    # cardsvc never made.
    def row(s: dict[str, Any]) -> dict[str, Any]:
        return {
            **{
                k: s[k]
                for k in (
                    "setl_id",
                    "mdtrt_id",
                    "psn_no",
                    "medfee_sumamt",
                    "fund_pay_sumamt",
                    "acct_pay",
                )
            },
            "refd_setl_flag": "0",
        }

    extra = {**row(kept[0]), "setl_id": "S" + "9" * 19, "mdtrt_id": "MDX", "refd_setl_flag": "0"}
    zipped = statement_zip([row(kept[0]), extra])
    upload_in = {
        "in": base64.b64encode(zipped).decode(),
        "filename": "stmt.zip",
        "fixmedins_code": desk.fixmedins_code,
    }
    uploaded = await desk.his.ok("9101", {"fsUploadIn": upload_in})
    assert uploaded["file_qury_no"] and uploaded["filename"] and "dld_endtime" in uploaded
    # The same file as an array of byte values is accepted too.
    as_numbers = await desk.his.ok("9101", {"fsUploadIn": {**upload_in, "in": list(zipped)}})
    assert as_numbers["file_qury_no"]

    detail = await desk.his.ok(
        "3202",
        {
            "data": {
                "setl_optins": "320200",
                "file_qury_no": uploaded["file_qury_no"],
                "stmt_begndate": today,
                "stmt_enddate": today,
                "medfee_sumamt": sums["medfee_sumamt"],
                "fund_pay_sumamt": sums["fund_pay_sumamt"],
                "cash_payamt": sums["psn_cash_pay"],
                "fixmedins_setl_cnt": 2,
            }
        },
    )
    fileinfo = detail["fileinfo"]
    assert fileinfo["file_qury_no"] and fileinfo["filename"] and "dld_endtime" in fileinfo
    download = await desk.his.post(
        desk.his.envelope(
            "9102",
            {
                "fsDownloadIn": {
                    "file_qury_no": fileinfo["file_qury_no"],
                    "filename": fileinfo["filename"],
                    "fixmedins_code": desk.fixmedins_code,
                }
            },
        )
    )
    assert download.status == 200 and download.raw[:2] == b"PK", download.describe()
    rows = {r["setl_id"]: r for r in result_rows(download.raw)}
    first, second = kept
    assert rows[first["setl_id"]]["stmt_rslt"] == "0"
    assert rows[second["setl_id"]]["stmt_rslt"] != "0"  # missing from the facility's file
    assert rows[extra["setl_id"]]["stmt_rslt"] != "0"  # unknown to cardsvc
    agreed = [r["setl_id"] for r in rows.values() if r["stmt_rslt"] == "0"]
    assert agreed == [first["setl_id"]]
    assert D(rows[first["setl_id"]]["medfee_sumamt"]) == first["medfee_sumamt"]
    assert rows[second["setl_id"]]["psn_no"] == second["psn_no"]
    assert rows[first["setl_id"]]["msgid"] == first["medins_setl_id"]  # the 2207's msgid


async def gateway_desk_fresh(service: Service, **facility: Any) -> Desk:
    """A level-1 hospital of its own: its reconciliation sees only this test's settlements."""
    return await desk(service, **{"level": "1", **facility})


# ---------------------------------------------------------------------- envelope and auth
async def test_envelope_and_authentication_failures(world: World):
    desk = world.level2
    his = desk.his
    holder = await world.holder()
    info = {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": "x|y", "card_sn": "0"}}

    async def auth_refused(headers: dict[str, str], body: dict[str, Any] | None = None) -> None:
        answer = await his.post(body or his.envelope("1101", info), headers)
        assert 400 <= answer.status < 500, answer.describe()
        assert answer.infcode == -1 and answer.err_code, answer.describe()

    secret, paasid = his.client.secret, his.client.paasid
    await auth_refused(tif_headers(paasid, secret + "0"))  # wrong signature
    await auth_refused(tif_headers(paasid, secret, timestamp=int(time.time()) - 400))  # stale
    await auth_refused(tif_headers(paasid, secret, timestamp=int(time.time()) + 400))  # future
    await auth_refused(tif_headers("P" + "0" * 15, secret))  # unknown client
    headers = tif_headers(paasid, secret)
    await auth_refused({k: v for k, v in headers.items() if k != "x-tif-nonce"})
    await auth_refused(tif_headers(paasid, secret, nonce="short"))  # < 16 characters
    # A replayed nonce, even with a fresh timestamp and a correct signature.
    nonce = "n" * 16 + unique_code("")
    first = await his.post(his.envelope("1101", info), tif_headers(paasid, secret, nonce=nonce))
    assert first.status == 200, first.describe()
    await auth_refused(tif_headers(paasid, secret, nonce=nonce, timestamp=int(time.time()) + 1))

    # Another facility's fixmedins_code: this client acts for its own only.
    other = await his.call("1101", info, fixmedins_code=world.level3.fixmedins_code)
    assert other.infcode == -1 and other.err_code, other.describe()

    # A card authenticated by another facility's terminal is not this facility's card.
    theirs = await busi_card_info(world.level3, holder, "identify")
    foreign = await his.call("1101", {"data": {**cert(theirs, holder), "begntime": local_time()}})
    assert foreign.infcode == -1 and foreign.err_code, foreign.describe()

    # Not an envelope: not JSON, no infno.
    for raw in (b"not json", b"[]", json.dumps({"msgid": his.mint_msgid()}).encode()):
        answer = await his.post(raw)
        assert 400 <= answer.status < 500 and answer.infcode == -1, answer.describe()

    await his.refused("9999", {"data": {}}, "UNSUPPORTED_INFNO")

    # A used msgid with another body; the same body gets the same answer.
    env = his.envelope("1101", info)
    first = await his.post(env)
    assert (await his.post(env)).body == first.body
    changed = {**env, "input": {"data": {**info["data"], "card_sn": "1"}}}
    reused = await his.post(changed)
    assert reused.infcode == -1 and reused.err_code == "MSGID_REUSED", reused.describe()

    # Fee lines: too many decimals, cnt × pric ≠ det_item_fee_sumamt, a malformed node.
    mdtrt_id = await register(desk, holder, "310")
    await visit_info(desk, holder, mdtrt_id, "11")

    def feedetail(**change: Any) -> dict[str, Any]:
        node = fen_line("A-AMOX", 1200, 2).node(mdtrt_id, holder.psn_no, "B1")
        return {"feedetail": [{**node, **change}]}

    await his.refused("2204", feedetail(det_item_fee_sumamt="24.001"), "AMOUNT_INVALID")
    await his.refused(
        "2204", feedetail(pric="12.0000001", det_item_fee_sumamt=D("24.00")), "AMOUNT_INVALID"
    )
    await his.refused("2204", feedetail(cnt="2.00001"), "AMOUNT_INVALID")
    await his.refused("2204", feedetail(det_item_fee_sumamt=D("24.01")), "FEE_AMOUNT_MISMATCH")
    await his.refused(
        "2204",
        feedetail(cnt=D("1.5"), pric=D("3.333333"), det_item_fee_sumamt=D("4.99")),
        "FEE_AMOUNT_MISMATCH",
    )
    for bad in (
        {"cnt": "two"},
        {"pric": None},
        {"fee_ocur_time": "yesterday"},
        {"det_item_fee_sumamt": True},
    ):
        answer = await his.call("2204", feedetail(**bad))
        assert answer.infcode == -1 and answer.err_code in ("INPUT_INVALID", "AMOUNT_INVALID"), (
            answer.describe()
        )
    for node in ({}, {"feedetail": {}}, {"feedetail": [1]}, {"feedetail": "x"}):
        answer = await his.call("2204", node)
        assert answer.infcode == -1 and answer.err_code == "INPUT_INVALID", answer.describe()
    # Nothing of the refused lines was kept: with one good line the visit holds ¥24.00.
    await upload(desk, "2204", holder, mdtrt_id, [fen_line("A-AMOX", 1200, 2)])
    identify = await busi_card_info(desk, holder, "identify")
    pre = await his.ok(
        "2206", settle_input(holder, identify, mdtrt_id, "310", "11", "24.00", chrg_bchno="B1")
    )
    assert pre["setlinfo"]["medfee_sumamt"] == D("24.00")
    await his.refused(
        "2203",
        {
            "mdtrtinfo": {
                "mdtrt_id": "MDNONE",
                "psn_no": holder.psn_no,
                "med_type": "11",
                "begntime": local_time(),
            }
        },
        "VISIT_NOT_FOUND",
    )


async def test_concurrent_retries_of_one_settlement_settle_once(world: World):
    desk, service = world.level2, world.service
    holder = await world.holder(balance=5000)
    mdtrt_id = await register(desk, holder, "310")
    await visit_info(desk, holder, mdtrt_id, "11")
    await upload(desk, "2204", holder, mdtrt_id, [fen_line("A-AMOX", 1000, 1)])
    txn = await busi_card_info(desk, holder, "transaction")
    env = desk.his.envelope(
        "2207", settle_input(holder, txn, mdtrt_id, "310", "11", D("10.00"), chrg_bchno="B1")
    )
    answers = await asyncio.gather(*(desk.his.post(env) for _ in range(4)))
    ok = [a for a in answers if a.infcode == 0]
    assert ok, [a.describe() for a in answers]
    assert len({a.output["setlinfo"]["setl_id"] for a in ok}) == 1
    assert await balance(service, holder.psn_no) == 4000


async def test_a_suspended_facility_is_refused(world: World, service: Service):
    desk = await gateway_desk_fresh(service)
    holder = await world.holder()
    await person_info(desk, holder)
    cert_no = await busi_card_info(desk, holder, "identify")
    await service.admin_ok(
        "PATCH", f"/v1/facilities/{desk.fixmedins_code}", {"status": "suspended"}
    )
    answer = await desk.his.call(
        "1101", {"data": {**cert(cert_no, holder), "begntime": local_time()}}
    )
    assert answer.infcode == -1 and answer.err_code == "FACILITY_SUSPENDED", answer.describe()


async def test_a_disabled_gateway_client_is_refused(world: World, service: Service):
    desk = await gateway_desk_fresh(service)
    holder = await world.holder()
    await person_info(desk, holder)
    await service.admin_ok(
        "PATCH", f"/v1/gateway-clients/{desk.his.client.paasid}", {"status": "disabled"}
    )
    answer = await desk.his.call("1101", {"data": {}})
    assert 400 <= answer.status < 500 and answer.infcode == -1, answer.describe()
    assert answer.err_code == "GATEWAY_CLIENT_DISABLED", answer.describe()
    # The facility's other client is not affected.
    second = await gateway_client(service, desk.fixmedins_code)
    his = His(
        service.http,
        service.base_url,
        GatewayClient(second["paasid"], second["secret"], desk.fixmedins_code),
    )
    await his.sign_in()
    await person_info(Desk(service, desk.fixmedins_code, his, desk.pos, second), holder)


async def test_authentication_failures_answer_the_whole_envelope(world: World):
    his = world.level2.his
    answer = await his.post(his.envelope("1101", {"data": {}}), his.headers(nonce="short"))
    assert 400 <= answer.status < 500 and answer.infcode == -1, answer.describe()
    check(answer)


# ---------------------------------------------------------------------- more of the contract
async def test_2601_undoes_a_registration_and_unsettled_fee_lines(world: World):
    desk = world.level2
    holder = await world.holder()
    mdtrt_id = await register(desk, holder, "310")
    await visit_info(desk, holder, mdtrt_id, "11")
    lines_env = desk.his.envelope(
        "2204", {"feedetail": [fen_line("A-AMOX", 1000, 1).node(mdtrt_id, holder.psn_no, "B1")]}
    )
    assert (await desk.his.post(lines_env)).infcode == 0
    undo = {"psn_no": holder.psn_no, "omsgid": lines_env["msgid"], "oinfno": "2204"}
    await desk.his.ok("2601", {"data": undo})
    identify = await busi_card_info(desk, holder, "identify")
    gone = await desk.his.call(
        "2206", settle_input(holder, identify, mdtrt_id, "310", "11", "10.00", chrg_bchno="B1")
    )
    assert gone.infcode == -1, gone.describe()  # the lines are gone

    # 2601 of the 2201: the registration is cancelled, the visit takes nothing more.
    cert_no = await busi_card_info(desk, holder, "identify")
    reg_env = desk.his.envelope(
        "2201",
        {
            "data": {
                "psn_no": holder.psn_no,
                "insutype": "310",
                "begntime": local_time(),
                **cert(cert_no, holder),
                "ipt_otp_no": unique_code("OP"),
                "atddr_no": "D0001",
                "dr_name": "李医生",
                "dept_code": "D01",
                "dept_name": "内科",
                "caty": "A03",
            }
        },
    )
    registered = await desk.his.post(reg_env)
    assert registered.infcode == 0, registered.describe()
    second = registered.output["data"]["mdtrt_id"]
    await desk.his.ok(
        "2601", {"data": {"psn_no": holder.psn_no, "omsgid": reg_env["msgid"], "oinfno": "2201"}}
    )
    after = await desk.his.call(
        "2204", {"feedetail": [fen_line("A-AMOX", 1000, 1).node(second, holder.psn_no, "B1")]}
    )
    assert after.infcode == -1, after.describe()


async def test_cancel_registration_2202_and_fee_lines_2205_2302(world: World):
    desk = world.level2
    holder = await world.holder()
    mdtrt_id = await register(desk, holder, "310")
    await visit_info(desk, holder, mdtrt_id, "11")
    await upload(desk, "2204", holder, mdtrt_id, [fen_line("A-AMOX", 1000, 1)], "B1")
    await upload(desk, "2204", holder, mdtrt_id, [fen_line("A-AMOX", 2000, 1)], "B2")
    await desk.his.ok(
        "2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "B1", "psn_no": holder.psn_no}}
    )
    identify = await busi_card_info(desk, holder, "identify")
    pre = await desk.his.ok(
        "2206", settle_input(holder, identify, mdtrt_id, "310", "11", "20.00", chrg_bchno="B2")
    )
    assert pre["setlinfo"]["medfee_sumamt"] == D("20.00")
    await desk.his.ok(
        "2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "0000", "psn_no": holder.psn_no}}
    )
    empty = await desk.his.call(
        "2206", settle_input(holder, identify, mdtrt_id, "310", "11", "20.00", chrg_bchno="B2")
    )
    assert empty.infcode == -1, empty.describe()
    await desk.his.ok(
        "2202", {"data": {"psn_no": holder.psn_no, "mdtrt_id": mdtrt_id, "ipt_otp_no": "x"}}
    )

    stay = await admit(world.level3, holder, "310", "21")
    one, two = fen_line("A-AMOX", 1000, 1), fen_line("C-VIT", 500, 2)
    await upload(world.level3, "2301", holder, stay, [one, two])
    await world.level3.his.ok(
        "2302", {"data": {"feedetl_sn": one.feedetl_sn, "mdtrt_id": stay, "psn_no": holder.psn_no}}
    )
    identify = await busi_card_info(world.level3, holder, "identify")
    pre = await world.level3.his.ok(
        "2303", stay_input(holder, identify, stay, "310", D("10.00"), True)
    )
    assert pre["setlinfo"]["medfee_sumamt"] == D("10.00")
    await world.level3.his.ok(
        "2302", {"data": {"feedetl_sn": "0000", "mdtrt_id": stay, "psn_no": holder.psn_no}}
    )
    empty = await world.level3.his.call(
        "2303", stay_input(holder, identify, stay, "310", D("10.00"), True)
    )
    assert empty.infcode == -1, empty.describe()


async def test_identity_number_serves_1101_and_presettlement_not_settlement(world: World):
    desk = world.level2
    holder = await world.holder()
    by_certno = {
        "mdtrt_cert_type": "02",
        "mdtrt_cert_no": holder.person["certno_full"],
        "card_sn": "",
        "begntime": local_time(),
        "psn_cert_type": "01",
        "certno": holder.person["certno_full"],
        "psn_name": "张三",
    }
    out = await desk.his.ok("1101", {"data": by_certno})
    assert out["baseinfo"]["psn_no"] == holder.psn_no
    await desk.his.refused(
        "1101",
        {"data": {**by_certno, "mdtrt_cert_type": "01", "mdtrt_cert_no": "E1"}},
        "CERT_TYPE_NOT_ALLOWED",
    )
    mdtrt_id = await register(desk, holder, "310")
    await visit_info(desk, holder, mdtrt_id, "11")
    await upload(desk, "2204", holder, mdtrt_id, [fen_line("A-AMOX", 1000, 1)])
    pre = settle_input(holder, "x", mdtrt_id, "310", "11", D("10.00"), chrg_bchno="B1")
    pre["data"].update(mdtrt_cert_type="02", mdtrt_cert_no=holder.person["certno_full"], card_sn="")
    assert (await desk.his.ok("2206", pre))["setlinfo"]["medfee_sumamt"] == D("10.00")
    await desk.his.refused("2207", pre, "CERT_TYPE_NOT_ALLOWED")


async def test_a_transaction_token_pays_once(world: World):
    desk = world.level2
    holder = await world.holder()
    txn = await busi_card_info(desk, holder, "transaction")
    visits = []
    for _ in range(2):
        mdtrt_id = await register(desk, holder, "310")
        await visit_info(desk, holder, mdtrt_id, "11")
        await upload(desk, "2204", holder, mdtrt_id, [fen_line("A-AMOX", 1000, 1)])
        visits.append(mdtrt_id)
    first, second = (
        settle_input(holder, txn, m, "310", "11", D("10.00"), chrg_bchno="B1") for m in visits
    )
    await desk.his.ok("2207", first)
    await desk.his.refused("2207", second, "CARD_TOKEN_USED")


async def test_work_injury_uses_the_only_case_and_refuses_several(world: World, service: Service):
    desk = world.level2
    holder = await world.holder(insutypes=("310", "410"))
    case = {
        "psn_no": holder.psn_no,
        "employer": "无锡某厂",
        "injury_date": "2026-01-01",
        "valid_from": "2026-01-01",
        "valid_to": "2027-12-31",
    }
    only = await service.admin_ok("POST", "/v1/injury-cases", case)
    # Registered without exp_content: the person's only valid approved case is used (the
    # native preview names it, as the native API requires).
    out = await outpatient_settlement(
        desk, holder, [fen_line("W-SUT", 20000, 1)], "410", injury_case_id=only["case_id"]
    )
    assert [(d["fund_pay_type"], d["fund_payamt"]) for d in out["setldetail"]] == [
        ("410100", D("200.00"))
    ]
    await service.admin_ok("POST", "/v1/injury-cases", case)  # now two: which one is unsaid
    answer = await desk.his.call(
        "2201",
        {
            "data": {
                "psn_no": holder.psn_no,
                "insutype": "410",
                "begntime": local_time(),
                **cert(await busi_card_info(desk, holder, "identify"), holder),
                "ipt_otp_no": unique_code("OP"),
            }
        },
    )
    if answer.infcode == -1:
        assert answer.err_code == "INJURY_CASE_INVALID", answer.describe()
        return
    mdtrt_id = answer.output["data"]["mdtrt_id"]
    await visit_info(desk, holder, mdtrt_id, "11")
    await upload(desk, "2204", holder, mdtrt_id, [fen_line("W-SUT", 20000, 1)])
    txn = await busi_card_info(desk, holder, "transaction")
    await desk.his.refused(
        "2207",
        settle_input(holder, txn, mdtrt_id, "410", "11", D("200.00"), chrg_bchno="B1"),
        "INJURY_CASE_INVALID",
    )


async def test_decimal_lines_follow_the_policy_rule(world: World):
    """POLICY's rule for decimal lines: B-CEF (max ¥20.00, 10 % pre-self-pay) at ¥25.50 ×
    1.5 = ¥38.25; over = r((2550 − 2000) × 1.5) = 825 fen; base 3000; pre 300; in-scope 2700."""
    desk = world.level2
    holder = await world.holder()
    mdtrt_id = await register(desk, holder, "310")
    await visit_info(desk, holder, mdtrt_id, "11")
    line = Line("B-CEF", D("25.5"), D("1.5"))
    [row] = await upload(desk, "2204", holder, mdtrt_id, [line])
    assert row["det_item_fee_sumamt"] == D("38.25") and row["overlmt_amt"] == D("8.25")
    assert row["preselfpay_amt"] == D("3.00") and row["inscp_scp_amt"] == D("27.00")
    assert row["fulamt_ownpay_amt"] == 0
    identify = await busi_card_info(desk, holder, "identify")
    pre = await desk.his.ok(
        "2206", settle_input(holder, identify, mdtrt_id, "310", "11", "38.25", chrg_bchno="B1")
    )
    s = pre["setlinfo"]
    assert (s["overlmt_selfpay"], s["preselfpay_amt"], s["inscp_scp_amt"]) == (
        D("8.25"),
        D("3.00"),
        D("27.00"),
    )


async def test_expired_sign_no_and_a_missing_insured_region(world: World, service: Service):
    mine = await gateway_desk_fresh(service)
    holder = await world.holder()
    # A sign_no is valid 24 h: aged in the database (a test cannot wait a day).
    conn = await asyncpg.connect(service.database_url)
    try:
        await conn.execute(
            "UPDATE gateway_signins SET expires_at = now() - interval '1 second'"
            " WHERE sign_no = $1",
            mine.his.sign_no,
        )
    finally:
        await conn.close()
    await mine.his.refused("1101", {"data": {}}, "SIGN_NO_INVALID")
    await mine.his.sign_in()
    await person_info(mine, holder)


async def test_a_missing_insured_region_is_refused(world: World):
    desk = world.level2
    holder = await world.holder()
    mdtrt_id = await register(desk, holder, "310")
    data = {"psn_no": holder.psn_no, "mdtrt_id": mdtrt_id, "ipt_otp_no": "x"}
    env = desk.his.envelope("2202", {"data": data})
    del env["insuplc_admdvs"]
    answer = await desk.his.post(env)
    assert answer.infcode == -1 and answer.err_code == "INPUT_INVALID", answer.describe()


# ---------------------------------------------------------------------- authorisation, edges
async def test_each_facility_and_person_acts_only_on_its_own(world: World):
    ours, theirs, service = world.level2, world.level3, world.service
    holder, other = await world.holder(balance=5000), await world.holder(balance=5000)
    mdtrt_id = await register(ours, holder, "310")
    await visit_info(ours, holder, mdtrt_id, "11")
    await upload(ours, "2204", holder, mdtrt_id, [fen_line("A-AMOX", 1000, 1)])

    # Another person's card does not pay for this person's visit.
    foreign_card = await busi_card_info(ours, other, "transaction")
    data = settle_input(holder, foreign_card, mdtrt_id, "310", "11", D("10.00"), chrg_bchno="B1")
    data["data"]["card_sn"] = other.card.card_sn
    wrong = await ours.his.call("2207", data)
    assert wrong.infcode == -1, wrong.describe()
    assert await balance(service, other.psn_no) == 5000
    # Lines for a visit under another person's psn_no are refused.
    stray = await ours.his.call(
        "2204", {"feedetail": [fen_line("A-AMOX", 1000, 1).node(mdtrt_id, other.psn_no, "B1")]}
    )
    assert stray.infcode == -1, stray.describe()

    txn = await busi_card_info(ours, holder, "transaction")
    env = ours.his.envelope(
        "2207", settle_input(holder, txn, mdtrt_id, "310", "11", D("10.00"), chrg_bchno="B1")
    )
    settled = await ours.his.post(env)
    assert settled.infcode == 0, settled.describe()
    setl_id = settled.output["setlinfo"]["setl_id"]
    assert await balance(service, holder.psn_no) == 4000

    # Another facility can neither see our visit, nor cancel our settlement, nor undo our
    # message; its msgid space is its own (the same msgid is a new message there).
    cancel = {"setl_id": setl_id, "mdtrt_id": mdtrt_id, "psn_no": holder.psn_no}
    assert (await theirs.his.call("2208", {"data": cancel})).infcode == -1
    undo = {"psn_no": holder.psn_no, "omsgid": env["msgid"], "oinfno": "2207"}
    await theirs.his.call("2601", {"data": undo})
    assert await balance(service, holder.psn_no) == 4000
    same_msgid = await theirs.his.call("9999", {}, msgid=env["msgid"])
    assert same_msgid.err_code == "UNSUPPORTED_INFNO", same_msgid.describe()
    seen = await theirs.his.call(
        "2203",
        {"mdtrtinfo": {"mdtrt_id": mdtrt_id, "psn_no": holder.psn_no, "med_type": "11"}},
    )
    assert seen.err_code == "VISIT_NOT_FOUND", seen.describe()


async def test_amounts_out_of_the_interface_are_refused_never_a_500(world: World):
    desk = world.level2
    holder = await world.holder()
    mdtrt_id = await register(desk, holder, "310")
    await visit_info(desk, holder, mdtrt_id, "11")

    def feedetail(**change: Any) -> dict[str, Any]:
        node = fen_line("A-AMOX", 1200, 2).node(mdtrt_id, holder.psn_no, "B1")
        return {"feedetail": [{**node, **change}]}

    await desk.his.refused("2204", feedetail(det_item_fee_sumamt=D("24.001")), "AMOUNT_INVALID")
    await desk.his.refused("2204", feedetail(cnt=D("2.00001")), "AMOUNT_INVALID")
    for bad in (
        {"det_item_fee_sumamt": "1E+30", "pric": "1E+30", "cnt": "1"},
        {"det_item_fee_sumamt": D("1E+30")},
        {"pric": "NaN"},
        {"pric": "Infinity"},
        {"cnt": "-2", "det_item_fee_sumamt": "-24.00"},  # a negative count is a 2301 refund
        {"pric": "-12.00", "det_item_fee_sumamt": "-24.00"},
        {"cnt": "0", "det_item_fee_sumamt": "0"},
    ):
        answer = await desk.his.call("2204", feedetail(**bad))
        assert answer.status == 200 and answer.infcode == -1, (bad, answer.describe())
        assert answer.err_code in ("AMOUNT_INVALID", "INPUT_INVALID"), (bad, answer.describe())
    await upload(desk, "2204", holder, mdtrt_id, [fen_line("A-AMOX", 1200, 2)])
    identify = await busi_card_info(desk, holder, "identify")
    # Trailing zeros name the same exact value: "24.000" is ¥24.00 (the gateway's reading
    # of "more decimals than allowed"; a significant third decimal is refused below).
    await desk.his.ok(
        "2206", settle_input(holder, identify, mdtrt_id, "310", "11", "24.000", chrg_bchno="B1")
    )
    await desk.his.refused(
        "2206",
        settle_input(holder, identify, mdtrt_id, "310", "11", D("24.001"), chrg_bchno="B1"),
        "AMOUNT_INVALID",
    )
    long_msgid = desk.his.mint_msgid() + "00"  # over 30 characters
    answer = await desk.his.call("1101", {"data": {}}, msgid=long_msgid)
    assert answer.infcode == -1 and answer.err_code == "INPUT_INVALID", answer.describe()


async def test_a_c_rated_facility_settles_held_for_review_as_natively(
    world: World, service: Service
):
    desk = await gateway_desk_fresh(service, credit_rating="C")
    holder = await world.holder(balance=5000)
    out = await outpatient_settlement(desk, holder, [fen_line("A-AMOX", 1000, 2)])
    setl_id = out["setlinfo"]["setl_id"]
    # The same settlement as the native API shows it: held for review, the same figures.
    native = await desk.pos.call("GET", f"/v1/settlements/{setl_id}")
    assert native["review_required"] is True, native
    for name in SETL_FEN_FIELDS:
        assert to_fen(out["setlinfo"][name]) == native[name], name
    rated_d = await gateway_desk_fresh(service)
    await service.admin_ok(
        "POST",
        f"/v1/facilities/{rated_d.fixmedins_code}/credit-rating",
        {"credit_rating": "D", "reason": "suspended for the test"},
    )
    answer = await rated_d.his.call("1101", {"data": {}})
    assert answer.infcode == -1 and answer.err_code == "FACILITY_SUSPENDED", answer.describe()
