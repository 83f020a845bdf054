"""Gateway settlement (2206/2207, 2303/2304, 2208/2305, 2601) end to end, through the
national endpoint with a signed gateway client, on real PostgreSQL and hsm_stub: the figures
equal the native API's to the fen, a line is never settled twice (reruns, concurrent
messages, a process that died between the settlement's commit and the line marking), and a
message is undone by 2601 even when its answer was lost."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
import pytest_asyncio
from aiohttp import web

from cardsvc.app import create_app
from cardsvc.config import Settings
from cardsvc.national import reversals
from cardsvc.settlement import policy
from cardsvc.terminal_sdk.client import TerminalClient
from tests.conftest import free_port
from tests.support.api import (
    POLICY_CATALOG,
    Service,
    authenticate_card,
    credit,
    issue_card,
    lines,
    patient,
)
from tests.support.gateway import GatewayClient, gateway_client, new_msgid

pytestmark = pytest.mark.asyncio(loop_scope="session")

STEP3 = policy.STEP3_AMOUNTS
_seq = itertools.count(1)


def fen(value: Any) -> int:
    """A JSON number of yuan (decoded as Decimal) → fen, exactly."""
    scaled = Decimal(value) * 100
    assert scaled == scaled.to_integral_value(), value
    return int(scaled)


@dataclass
class His:
    """A hospital system speaking the national interface to the gateway."""

    client: GatewayClient

    @property
    def paasid(self) -> str:
        return self.client.paasid

    @property
    def fixmedins_code(self) -> str:
        return self.client.fixmedins_code

    def new_msgid(self) -> str:
        return new_msgid(self.fixmedins_code)

    async def call(self, infno: str, inputs: dict[str, Any], *, msgid: str | None = None) -> Any:
        answer = await self.client.call(infno, inputs, msgid=msgid)
        assert answer.status == 200, answer.body
        return answer.body

    async def ok(self, infno: str, inputs: dict[str, Any], *, msgid: str | None = None) -> Any:
        answer = await self.call(infno, inputs, msgid=msgid)
        assert answer["infcode"] == 0, answer
        return answer["output"]

    async def refused(self, infno: str, inputs: dict[str, Any], code: str) -> str:
        answer = await self.call(infno, inputs)
        assert answer["infcode"] == -1, answer
        assert answer["err_msg"].startswith(f"[{code}]"), answer
        return str(answer["err_msg"])


@contextlib.asynccontextmanager
async def own_session(his: His, base_url: str | None = None) -> AsyncIterator[His]:
    """The same client on an HTTP session of its own (and another worker's address): the
    connections concurrent messages open are closed afterwards, not left in the shared
    session to change the timing of the tests that follow."""
    async with aiohttp.ClientSession() as http:
        service = dataclasses.replace(
            his.client.service, http=http, base_url=base_url or his.client.service.base_url
        )
        yield His(dataclasses.replace(his.client, service=service))


@dataclass
class Site:
    """A facility with a gateway client, a card reader terminal (its HIS workstation's) and
    a native POS terminal, for the same claims by both roads."""

    service: Service
    his: His
    pos: TerminalClient
    counter: TerminalClient


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def site(service: Service) -> Site:
    await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})
    facility = await service.facility(level="2")
    code = facility["fixmedins_code"]
    return Site(
        service,
        His(await gateway_client(service, code)),
        await service.terminal("pos", code),
        await service.terminal("counter"),
    )


@dataclass
class Holder:
    psn_no: str
    cert_no: str  # card_no|busi_card_info of a transaction token
    card: Any


async def holder(site: Site, *, balance: int = 0, purpose: str = "transaction") -> Holder:
    person = await site.service.person()
    if balance:
        await credit(site.service, person["psn_no"], balance)
    card = await issue_card(site.counter, person["psn_no"])
    auth = await authenticate_card(site.pos, card, purpose)
    return Holder(person["psn_no"], f"{card.card_no}|{auth['card_token']}", card)


async def new_token(site: Site, h: Holder, purpose: str = "transaction") -> str:
    auth = await authenticate_card(site.pos, h.card, purpose)
    return f"{h.card.card_no}|{auth['card_token']}"


# Two lines: 2 × 12.50 of A-AMOX (in scope), 3 × 25.00 of B-CEF (over its 20.00 ceiling,
# 10 % pre-self-pay): the native claim lines(("A-AMOX", 1250, 2), ("B-CEF", 2500, 3)).
FEES = [("A-AMOX", "12.50", "2", "25.00"), ("B-CEF", "25.000000", "3.0000", "75.00")]
NATIVE_FEES = lines(("A-AMOX", 1250, 2), ("B-CEF", 2500, 3))
SUM = Decimal("100.00")


async def outpatient_visit(
    site: Site, h: Holder, fees: list[tuple[str, str, str, str]] = FEES, *, med_type: str = "11"
) -> str:
    his = site.his
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    reg = await his.ok(
        "2201",
        {
            "data": {
                "psn_no": h.psn_no,
                "insutype": "310",
                "begntime": now,
                "mdtrt_cert_type": "03",
                "mdtrt_cert_no": h.cert_no,
                "ipt_otp_no": f"OTP{next(_seq)}",
                "atddr_no": "D01",
                "dr_name": "王医生",
                "dept_code": "01",
                "dept_name": "内科",
                "caty": "A03",
            }
        },
    )
    mdtrt_id = str(reg["data"]["mdtrt_id"])
    await his.ok(
        "2203",
        {
            "mdtrtinfo": {
                "mdtrt_id": mdtrt_id,
                "psn_no": h.psn_no,
                "med_type": med_type,
                "begntime": now,
                "main_cond_dscr": "",
                "dise_codg": "J06.900",
                "dise_name": "急性上呼吸道感染",
            },
            "diseinfo": [],
        },
    )
    await upload(site, h, mdtrt_id, fees)
    return mdtrt_id


async def upload(
    site: Site,
    h: Holder,
    mdtrt_id: str,
    fees: list[tuple[str, str, str, str]],
    *,
    infno: str = "2204",
    chrg_bchno: str = "B1",
) -> Any:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return await site.his.ok(
        infno,
        {
            "feedetail": [
                {
                    "feedetl_sn": f"F{next(_seq)}",
                    "mdtrt_id": mdtrt_id,
                    "psn_no": h.psn_no,
                    "chrg_bchno": chrg_bchno,
                    "rxno": "",
                    "rx_circ_flag": "0",
                    "fee_ocur_time": now,
                    "med_list_codg": code,
                    "medins_list_codg": code,
                    "det_item_fee_sumamt": Decimal(total),
                    "cnt": Decimal(cnt),
                    "pric": Decimal(pric),
                }
                for code, pric, cnt, total in fees
            ]
        },
    )


def settle_data(h: Holder, mdtrt_id: str, medfee: Decimal = SUM, **extra: Any) -> dict[str, Any]:
    return {
        "data": {
            "psn_no": h.psn_no,
            "mdtrt_cert_type": "03",
            "mdtrt_cert_no": h.cert_no,
            "med_type": "11",
            "medfee_sumamt": medfee,
            "psn_setlway": "01",
            "mdtrt_id": mdtrt_id,
            "chrg_bchno": "0000",
            "acct_used_flag": "1",
            "insutype": "310",
            **extra,
        }
    }


async def db(site: Site) -> asyncpg.Connection:
    return await asyncpg.connect(site.service.database_url)


def assert_same_figures(setlinfo: dict[str, Any], native: dict[str, Any]) -> None:
    for name in STEP3:
        assert fen(setlinfo[name]) == native[name], (name, setlinfo[name], native[name])


async def test_outpatient_presettle_settle_cancel_match_the_native_api(site: Site):
    his = site.his
    h = await holder(site, balance=5000)
    twin = await patient(site.service, site.pos, site.counter, balance=5000)
    native = await twin.settle("310", "11", NATIVE_FEES)

    mdtrt_id = await outpatient_visit(site, h)
    preview = await his.ok("2206", settle_data(h, mdtrt_id))
    assert preview["setlinfo"]["setl_id"] == ""
    assert_same_figures(preview["setlinfo"], native)

    msgid = his.new_msgid()
    out = await his.ok("2207", settle_data(h, mdtrt_id), msgid=msgid)
    info = out["setlinfo"]
    assert_same_figures(info, native)
    assert info["medins_setl_id"] == msgid
    assert info["mdtrt_id"] == mdtrt_id and info["psn_no"] == h.psn_no
    assert all(info[name] == 0 for name in ("cvlserv_pay", "hifmi_pay", "maf_pay", "oth_pay"))
    assert [fen(d["fund_payamt"]) for d in out["setldetail"]] == [
        d["fund_payamt"] for d in native["setldetail"]
    ]
    setl_id = info["setl_id"]

    conn = await db(site)
    try:
        row = await conn.fetchrow(
            "SELECT idempotency_key, terminal_id, lines FROM settlements WHERE setl_id = $1",
            setl_id,
        )
        assert row["idempotency_key"] == f"gw:{msgid}"
        assert row["terminal_id"] == f"gateway:{his.paasid}"
        marked = await conn.fetchval(
            "SELECT count(*) FROM gateway_visit_lines WHERE mdtrt_id = $1 AND setl_id = $2",
            mdtrt_id,
            setl_id,
        )
        assert marked == 2
        [audit] = await conn.fetch(
            "SELECT actor, data FROM audit_log WHERE action = 'settlement.settled'"
            " AND data LIKE '%' || $1 || '%'",
            setl_id,
        )
        [entry] = [
            s for s in msgspec.json.decode(audit["data"])["settlements"] if s["setl_id"] == setl_id
        ]
        assert entry["actor"] == f"gateway:{his.paasid}"
        assert (entry["opter"], entry["opter_name"]) == ("OP001", "测试操作员")
    finally:
        await conn.close()

    # Nothing left to settle: the lines are the settlement's.
    await his.refused("2206", settle_data(h, mdtrt_id), "NO_UNSETTLED_LINES")

    cancelled = await his.ok(
        "2208", {"data": {"setl_id": setl_id, "mdtrt_id": mdtrt_id, "psn_no": h.psn_no}}
    )
    back = cancelled["setlinfo"]
    assert back["setl_id"].startswith("R")
    for name in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay"):
        assert fen(back[name]) == native[name] >= 0
    assert fen(back["balc"]) == 5000
    conn = await db(site)
    try:
        [audit] = await conn.fetch(
            "SELECT actor, data FROM audit_log WHERE action = 'settlement.reversed'"
            " AND object_id = $1",
            setl_id,
        )
        assert audit["actor"] == f"gateway:{his.paasid}"
        assert "opter OP001 测试操作员" in msgspec.json.decode(audit["data"])["reason"]
    finally:
        await conn.close()
    # Released: the same lines can be settled again (with a new PIN entry).
    h.cert_no = await new_token(site, h)
    again = await his.ok("2207", settle_data(h, mdtrt_id))
    assert_same_figures(again["setlinfo"], native)


async def test_decimal_lines_settle_exactly(site: Site):
    h = await holder(site)
    # 0.5 box at 33.333333 → 16.67 (half up from 16.6666665); 1.25 × 8.00 = 10.00.
    fees = [("A-AMOX", "33.333333", "0.5", "16.67"), ("C-VIT", "8", "1.25", "10.00")]
    mdtrt_id = await outpatient_visit(site, h, fees)
    info = (await site.his.ok("2207", settle_data(h, mdtrt_id, Decimal("26.67"))))["setlinfo"]
    assert fen(info["medfee_sumamt"]) == 2667
    assert fen(info["fulamt_ownpay_amt"]) == 1000  # class C
    assert fen(info["inscp_scp_amt"]) == 1667


async def test_medfee_sumamt_must_be_the_lines_sum(site: Site):
    h = await holder(site)
    mdtrt_id = await outpatient_visit(site, h)
    await site.his.refused("2207", settle_data(h, mdtrt_id, Decimal("99.99")), "FEE_SUM_MISMATCH")
    await site.his.refused("2206", settle_data(h, mdtrt_id, Decimal("100.01")), "FEE_SUM_MISMATCH")
    await site.his.refused("2207", settle_data(h, mdtrt_id, "100.001"), "AMOUNT_INVALID")
    await site.his.refused("2207", settle_data(h, mdtrt_id, "-100.00"), "AMOUNT_INVALID")
    await site.his.refused("2207", settle_data(h, mdtrt_id, "abc"), "INPUT_INVALID")


async def test_settlement_needs_a_transaction_token_of_this_facility(site: Site):
    h = await holder(site, purpose="identify")
    mdtrt_id = await outpatient_visit(site, h)
    # Pre-settlement takes any token; settlement only a transaction one.
    await site.his.ok("2206", settle_data(h, mdtrt_id))
    await site.his.refused("2207", settle_data(h, mdtrt_id), "CARD_TOKEN_PURPOSE")

    other = await site.service.facility(level="2")
    elsewhere = await site.service.terminal("pos", other["fixmedins_code"])
    auth = await authenticate_card(elsewhere, h.card, "transaction")
    foreign = {**settle_data(h, mdtrt_id)}
    foreign["data"] = {**foreign["data"], "mdtrt_cert_no": f"{h.card.card_no}|{auth['card_token']}"}
    await site.his.refused("2207", foreign, "CARD_TOKEN_INVALID")
    await site.his.refused(
        "2207", settle_data(h, mdtrt_id, mdtrt_cert_type="02"), "CERT_TYPE_NOT_ALLOWED"
    )

    conn = await db(site)
    try:
        assert not await conn.fetchval(
            "SELECT count(*) FROM settlements WHERE mdtrt_id = $1", mdtrt_id
        )
    finally:
        await conn.close()


async def test_rerun_after_a_lost_answer_settles_once(site: Site):
    """The process stored the settlement but died before the gateway stored its answer
    (the stored answer is removed here): the HIS sends the same message again."""
    his = site.his
    h = await holder(site, balance=5000)
    mdtrt_id = await outpatient_visit(site, h)
    msgid = his.new_msgid()
    first = await his.ok("2207", settle_data(h, mdtrt_id), msgid=msgid)
    conn = await db(site)
    try:
        await conn.execute(
            "DELETE FROM gateway_messages WHERE fixmedins_code = $1 AND msgid = $2",
            his.fixmedins_code,
            msgid,
        )
        again = await his.ok("2207", settle_data(h, mdtrt_id), msgid=msgid)
        assert again == first
        assert (
            await conn.fetchval("SELECT count(*) FROM settlements WHERE mdtrt_id = $1", mdtrt_id)
            == 1
        )
        assert await conn.fetchval(
            "SELECT balance FROM psn_accounts WHERE psn_no = $1", h.psn_no
        ) == 5000 - fen(first["setlinfo"]["acct_pay"])
    finally:
        await conn.close()
    # The stored answer, now that it is stored again.
    assert await his.ok("2207", settle_data(h, mdtrt_id), msgid=msgid) == first


async def test_a_terminal_cannot_take_the_key_of_a_gateway_message(site: Site):
    """A gateway settlement's Idempotency-Key is "gw:" + its msgid: a POS terminal of the
    same facility settling under "gw:<msgid>" first would have had a later 2207 of that msgid
    answer the terminal's settlement as its own. The native API refuses the gateway's keys."""
    his = site.his
    h = await holder(site, balance=5000)
    mdtrt_id = await outpatient_visit(site, h)
    msgid = his.new_msgid()
    native = await patient(site.service, site.pos, site.counter, balance=5000)
    taken = await native.request(
        "/v1/settlements", "310", "11", lines(("A-AMOX", 100, 1)), key="gw:" + msgid
    )
    assert taken.status == 400, taken.body
    assert taken.body["error"]["code"] == "IDEMPOTENCY_KEY_RESERVED", taken.body
    out = await his.ok("2207", settle_data(h, mdtrt_id), msgid=msgid)
    assert out["setlinfo"]["psn_no"] == h.psn_no
    assert out["setlinfo"]["medfee_sumamt"] == SUM
    # Nor can a terminal read the gateway's settlement back under its key.
    again = await native.request(
        "/v1/settlements", "310", "11", lines(("A-AMOX", 100, 1)), key="gw:" + msgid
    )
    assert again.body["error"]["code"] == "IDEMPOTENCY_KEY_RESERVED", again.body


async def test_concurrent_messages_for_one_visit_settle_it_once(site: Site):
    his = site.his
    h = await holder(site, balance=5000)
    mdtrt_id = await outpatient_visit(site, h)
    # Each with a card token of its own (two workstations, say): only the visit's claim
    # stands between them and a second settlement of the same lines.
    certs = [await new_token(site, h) for _ in range(4)]
    msgids = [his.new_msgid() for _ in certs]
    async with own_session(his) as his:
        answers = await asyncio.gather(
            *(
                his.call("2207", settle_data(h, mdtrt_id, mdtrt_cert_no=c), msgid=m)
                for c, m in zip(certs, msgids, strict=True)
            )
        )
        settled = [a for a in answers if a["infcode"] == 0]
        assert len(settled) == 1, [a["err_msg"] for a in answers]
        for a, c, m in zip(answers, certs, msgids, strict=True):
            if a["infcode"] != 0:
                assert a["err_msg"].split("]")[0] in (
                    "[VISIT_SETTLING",
                    "[NO_UNSETTLED_LINES",
                    "[CARD_TOKEN_USED",
                ), a
            if a["err_msg"].startswith("[VISIT_SETTLING]"):
                # Retryable: the same message sent again sees the lines settled.
                again = await his.call("2207", settle_data(h, mdtrt_id, mdtrt_cert_no=c), msgid=m)
                assert again["err_msg"].startswith("[NO_UNSETTLED_LINES]"), again
    conn = await db(site)
    try:
        rows = await conn.fetch("SELECT setl_id FROM settlements WHERE mdtrt_id = $1", mdtrt_id)
        assert [r["setl_id"] for r in rows] == [settled[0]["output"]["setlinfo"]["setl_id"]]
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM gateway_visit_lines WHERE mdtrt_id = $1 AND setl_id = $2",
                mdtrt_id,
                rows[0]["setl_id"],
            )
            == 2
        )
    finally:
        await conn.close()


async def test_a_settlement_of_lines_held_by_another_transaction_is_refused(site: Site):
    """A 2205/2302/2601 changing the visit's lines (or another settlement of the visit being
    written) holds them: a 2207 meanwhile is refused, retryably and not stored, and the
    same message sent again once they are free settles them."""
    his = site.his
    h = await holder(site, balance=5000)
    mdtrt_id = await outpatient_visit(site, h)
    msgid = his.new_msgid()
    conn = await db(site)
    try:
        async with conn.transaction():
            await conn.execute(
                "SELECT 1 FROM gateway_visit_lines WHERE mdtrt_id = $1 FOR UPDATE", mdtrt_id
            )
            busy = await his.call("2207", settle_data(h, mdtrt_id), msgid=msgid)
            assert busy["err_msg"].startswith("[VISIT_SETTLING]"), busy
        out = await his.ok("2207", settle_data(h, mdtrt_id), msgid=msgid)
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM gateway_visit_lines WHERE mdtrt_id = $1 AND setl_id = $2",
                mdtrt_id,
                out["setlinfo"]["setl_id"],
            )
            == 2
        )
    finally:
        await conn.close()


async def test_inpatient_mid_stay_and_final_settlement(site: Site):
    his = site.his
    h = await holder(site, balance=100000)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    adm = await his.ok(
        "2401",
        {
            "mdtrtinfo": {
                "psn_no": h.psn_no,
                "insutype": "310",
                "begntime": now,
                "mdtrt_cert_type": "03",
                "mdtrt_cert_no": h.cert_no,
                "med_type": "21",
                "ipt_no": f"IPT{next(_seq)}",
            },
            "diseinfo": [],
        },
    )
    mdtrt_id = str(adm["result"]["mdtrt_id"])
    await upload(site, h, mdtrt_id, [("B-STENT", "800.00", "1", "800.00")], infno="2301")

    def data(medfee: str, mid: str) -> dict[str, Any]:
        d = settle_data(h, mdtrt_id, Decimal(medfee), mid_setl_flag=mid)
        del d["data"]["med_type"], d["data"]["chrg_bchno"]
        return d

    await his.refused("2304", data("800.00", "0"), "VISIT_NOT_DISCHARGED")
    await his.refused("2207", settle_data(h, mdtrt_id, Decimal("800.00")), "VISIT_KIND_MISMATCH")
    pre = await his.ok("2303", data("800.00", "1"))
    mid = await his.ok("2304", data("800.00", "1"))
    assert_same = {n: pre["setlinfo"][n] for n in STEP3}
    assert {n: mid["setlinfo"][n] for n in STEP3} == assert_same
    assert fen(mid["setlinfo"]["medfee_sumamt"]) == 80000

    await upload(site, h, mdtrt_id, [("A-AMOX", "12.50", "4", "50.00")], infno="2301")
    await his.ok(
        "2402",
        {"dscginfo": {"mdtrt_id": mdtrt_id, "psn_no": h.psn_no, "insutype": "310", "endtime": now}},
    )
    await his.refused("2304", data("50.00", "1"), "VISIT_DISCHARGED")
    h.cert_no = await new_token(site, h)
    final = await his.ok("2304", data("50.00", "0"))
    assert fen(final["setlinfo"]["medfee_sumamt"]) == 5000
    assert final["setlinfo"]["setl_id"] != mid["setlinfo"]["setl_id"]

    undone = await his.ok(
        "2305",
        {
            "data": {
                "mdtrt_id": mdtrt_id,
                "setl_id": final["setlinfo"]["setl_id"],
                "psn_no": h.psn_no,
            }
        },
    )
    assert fen(undone["setlinfo"]["medfee_sumamt"]) == 5000
    # Cancelling an inpatient settlement with the outpatient transaction is refused.
    await his.refused(
        "2208", {"data": {"setl_id": mid["setlinfo"]["setl_id"]}}, "VISIT_KIND_MISMATCH"
    )


async def test_2601_undoes_a_settlement_whose_answer_was_lost(site: Site):
    his = site.his
    h = await holder(site, balance=5000)
    mdtrt_id = await outpatient_visit(site, h)
    msgid = his.new_msgid()
    conn = await db(site)
    try:
        await his.ok("2207", settle_data(h, mdtrt_id), msgid=msgid)
        # The answer never reached the HIS (and the gateway lost it too).
        await conn.execute(
            "DELETE FROM gateway_messages WHERE fixmedins_code = $1 AND msgid = $2",
            his.fixmedins_code,
            msgid,
        )
        undo = {"data": {"psn_no": h.psn_no, "omsgid": msgid, "oinfno": "2207"}}
        out = await his.ok("2601", undo)
        assert out["result"]["outcome"] == "reversed"
        assert (
            await conn.fetchval(
                "SELECT status FROM settlements WHERE idempotency_key = $1", f"gw:{msgid}"
            )
            == "reversed"
        )
        assert (
            await conn.fetchval("SELECT balance FROM psn_accounts WHERE psn_no = $1", h.psn_no)
            == 5000
        )
        assert not await conn.fetchval(
            "SELECT count(*) FROM gateway_visit_lines WHERE mdtrt_id = $1 AND setl_id IS NOT NULL",
            mdtrt_id,
        )
        # Idempotent: a second 2601 (another msgid) reverses nothing more.
        again = await his.ok("2601", undo)
        assert again["result"]["outcome"] == "reversed"
        assert again["setlinfo"]["setl_id"] == out["setlinfo"]["setl_id"]
        # The undone message, arriving again, does not settle.
        await conn.execute(
            "DELETE FROM gateway_messages WHERE fixmedins_code = $1 AND msgid = $2",
            his.fixmedins_code,
            msgid,
        )
        answer = await his.call("2207", settle_data(h, mdtrt_id), msgid=msgid)
        assert answer["err_msg"].startswith("[MSGID_UNDONE]"), answer
    finally:
        await conn.close()


async def test_2601_of_a_message_that_never_arrived(site: Site):
    his = site.his
    h = await holder(site, balance=5000)
    mdtrt_id = await outpatient_visit(site, h)
    late = his.new_msgid()
    undo_msgid = his.new_msgid()
    out = await his.ok(
        "2601",
        {"data": {"psn_no": h.psn_no, "omsgid": late, "oinfno": "2207"}},
        msgid=undo_msgid,
    )
    assert out["result"]["outcome"] == "none"
    conn = await db(site)
    try:
        assert await reversals.undone_by(conn, his.fixmedins_code, late) == undo_msgid
        assert await reversals.undone_by(conn, his.fixmedins_code, undo_msgid) is None
    finally:
        await conn.close()
    answer = await his.call("2207", settle_data(h, mdtrt_id), msgid=late)
    assert answer["infcode"] == -1 and answer["err_msg"].startswith("[MSGID_UNDONE]"), answer
    # A new message settles the visit.
    await his.ok("2207", settle_data(h, mdtrt_id))
    await his.refused(
        "2601",
        {"data": {"psn_no": h.psn_no, "omsgid": late, "oinfno": "2203"}},
        "UNSUPPORTED_INFNO",
    )


async def test_2601_of_a_settlement_message_in_flight_waits_for_it(site: Site):
    """A settlement message is in flight from its admission (its msgid reserved, no answer
    yet) until its answer: its settlement may be committing, so a 2601 of it is refused,
    retryably, and records nothing. Once the reservation has lapsed (well past a try's
    bound) without a settlement, the message counts as never arrived."""
    his = site.his
    h = await holder(site, balance=5000)
    await outpatient_visit(site, h)
    flying = his.new_msgid()
    undo = {"data": {"psn_no": h.psn_no, "omsgid": flying, "oinfno": "2207"}}
    conn = await db(site)
    try:
        await conn.execute(  # as the admission reserves a message's msgid
            "INSERT INTO gateway_messages (fixmedins_code, msgid, infno, body_hash, paasid,"
            " pending_until, owner) VALUES ($1, $2, '2207', '\\x00', 'p', now() + interval"
            " '20 seconds', 1)",
            his.fixmedins_code,
            flying,
        )
        busy = await his.call("2601", undo)
        assert busy["err_msg"].startswith("[VISIT_SETTLING]"), busy
        assert await reversals.undone_by(conn, his.fixmedins_code, flying) is None
        await conn.execute(
            "UPDATE gateway_messages SET pending_until = now() - interval '10 minutes'"
            " WHERE fixmedins_code = $1 AND msgid = $2",
            his.fixmedins_code,
            flying,
        )
        out = await his.ok("2601", undo)
        assert out["result"]["outcome"] == "none"
    finally:
        await conn.close()


async def test_any_reversal_frees_the_lines(site: Site):
    """Reversed by the administrator (not by the facility's 2208): the visit's lines can be
    settled again."""
    his = site.his
    h = await holder(site, balance=5000)
    mdtrt_id = await outpatient_visit(site, h)
    first = await his.ok("2207", settle_data(h, mdtrt_id))
    setl_id = first["setlinfo"]["setl_id"]
    await site.service.admin_ok(
        "POST", f"/v1/settlements/{setl_id}/admin-reversal", {"reason": "wrong patient"}
    )
    h.cert_no = await new_token(site, h)
    again = await his.ok("2207", settle_data(h, mdtrt_id))
    assert again["setlinfo"]["setl_id"] != setl_id
    assert again["setlinfo"]["medfee_sumamt"] == SUM


async def test_pharmacy_purchase_matches_the_native_api(service: Service):
    """A pharmacy's 2204 opens the visit (its own mdtrt_id), 2207 settles it as 41."""
    await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})
    facility = await service.facility(type="pharmacy", level=None, agreements=["310", "410"])
    code = facility["fixmedins_code"]
    pharmacy = Site(
        service,
        His(await gateway_client(service, code)),
        await service.terminal("pos", code),
        await service.terminal("counter"),
    )
    h = await holder(pharmacy, balance=3000)
    twin = await patient(service, pharmacy.pos, pharmacy.counter, balance=3000)
    fees = [("A-AMOX", "12.50", "2", "25.00"), ("C-VIT", "8.00", "1", "8.00")]
    native = await twin.settle("310", "41", lines(("A-AMOX", 1250, 2), ("C-VIT", 800, 1)))
    mdtrt_id = f"PH{next(_seq)}{h.psn_no[-6:]}"
    await upload(pharmacy, h, mdtrt_id, fees)
    out = await pharmacy.his.ok("2207", settle_data(h, mdtrt_id, Decimal("33.00"), med_type="41"))
    assert_same_figures(out["setlinfo"], native)
    assert out["setlinfo"]["med_type"] == "41"


@pytest.mark.parametrize("infno", ["2206", "2207", "2208", "2303", "2304", "2305", "2601"])
@pytest.mark.parametrize(
    "inputs",
    [{}, {"data": []}, {"data": {"psn_no": 5}}, {"data": {"setl_id": "", "omsgid": ""}}],
    ids=["no node", "not an object", "wrong type", "empty ids"],
)
async def test_a_malformed_node_is_input_invalid(site: Site, infno: str, inputs: dict[str, Any]):
    await site.his.refused(infno, inputs, "INPUT_INVALID")


async def test_two_workers_settle_one_visit_once(site: Site, settings: Settings):
    """Two worker processes (two apps, each with its pool and settlement pipeline, one
    database) receive settlement messages for one visit at once: one settles it."""
    own = msgspec.structs.replace(settings, port=free_port())
    runner = web.AppRunner(create_app(own))
    await runner.setup()
    await web.TCPSite(runner, own.host, own.port).start()
    try:
        h = await holder(site, balance=5000)
        mdtrt_id = await outpatient_visit(site, h)
        certs = [await new_token(site, h) for _ in range(6)]
        base_url = f"http://{own.host}:{own.port}"
        async with own_session(site.his) as first, own_session(site.his, base_url) as second:
            answers = await asyncio.gather(
                *(
                    his.call("2207", settle_data(h, mdtrt_id, mdtrt_cert_no=c))
                    for his, c in zip([first, second] * 3, certs, strict=True)
                )
            )
    finally:
        await runner.cleanup()
    assert [a["infcode"] for a in answers].count(0) == 1, [a["err_msg"] for a in answers]
    conn = await db(site)
    try:
        rows = await conn.fetch("SELECT setl_id FROM settlements WHERE mdtrt_id = $1", mdtrt_id)
        assert len(rows) == 1
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM gateway_visit_lines WHERE mdtrt_id = $1 AND setl_id = $2",
                mdtrt_id,
                rows[0]["setl_id"],
            )
            == 2
        )
    finally:
        await conn.close()


async def test_a_charge_batch_is_settled_on_its_own(site: Site):
    his = site.his
    h = await holder(site, balance=5000)
    mdtrt_id = await outpatient_visit(site, h)  # batch B1: 100.00
    await upload(site, h, mdtrt_id, [("C-VIT", "8.00", "1", "8.00")], chrg_bchno="B2")
    await his.refused("2207", settle_data(h, mdtrt_id, Decimal("8.00")), "FEE_SUM_MISMATCH")
    b2 = await his.ok(
        "2207", settle_data(h, mdtrt_id, Decimal("8.00"), chrg_bchno="B2", acct_used_flag="0")
    )
    assert fen(b2["setlinfo"]["medfee_sumamt"]) == 800
    assert b2["setlinfo"]["acct_pay"] == 0  # the account not used, as asked
    assert b2["setlinfo"]["psn_cash_pay"] == b2["setlinfo"]["psn_part_amt"] > 0
    h.cert_no = await new_token(site, h)
    rest = await his.ok("2207", settle_data(h, mdtrt_id, SUM, chrg_bchno=""))
    assert fen(rest["setlinfo"]["medfee_sumamt"]) == 10000
    await his.refused("2206", settle_data(h, mdtrt_id, SUM), "NO_UNSETTLED_LINES")
