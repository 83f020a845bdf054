"""Visits and fee lines through the national gateway (2201-2205, 2401, 2301, 2302, 2402) on
the running service, real PostgreSQL and hsm_stub: registration with a card, the per-line
Step-1 answer, pharmacy visits opened by 2204, inpatient refund lines, refusals with their
codes, and a message run twice (its answer lost) doing its work once."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from cardsvc.errors import CardsvcError
from cardsvc.national import visits
from cardsvc.terminal_sdk.client import TerminalClient
from tests.support.api import (
    POLICY_CATALOG,
    IssuedCard,
    Service,
    authenticate_card,
    issue_card,
    unique_code,
)
from tests.support.gateway import (
    SHANGHAI,
    GatewayClient,
    card_cert,
    gateway_client,
    new_msgid,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Site:
    """A facility with its signed-in gateway client and a card reader (pos terminal)."""

    client: GatewayClient
    pos: TerminalClient

    @property
    def code(self) -> str:
        return self.client.fixmedins_code


@dataclass
class World:
    service: Service
    counter: TerminalClient
    hospital: Site
    other: Site
    pharmacy: Site
    no_maternity: Site


async def _site(service: Service, **facility: Any) -> Site:
    code = (await service.facility(**facility))["fixmedins_code"]
    return Site(await gateway_client(service, code), await service.terminal("pos", code))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(service: Service) -> World:
    await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})
    return World(
        service=service,
        counter=await service.terminal("counter"),
        hospital=await _site(service),
        other=await _site(service),
        pharmacy=await _site(service, type="pharmacy", level=None, agreements=["310", "410"]),
        no_maternity=await _site(service, agreements=["310"]),
    )


@pytest_asyncio.fixture(loop_scope="session")
async def db(service: Service) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(service.database_url)
    yield conn
    await conn.close()


@dataclass
class Holder:
    person: dict[str, Any]
    card: IssuedCard

    @property
    def psn_no(self) -> str:
        return str(self.person["psn_no"])


async def holder(world: World, insutypes: tuple[str, ...] = ("310",), **kw: Any) -> Holder:
    person = await world.service.person(insutypes=insutypes, **kw)
    return Holder(person, await issue_card(world.counter, person["psn_no"]))


async def cert(site: Site, who: Holder, purpose: str = "identify") -> dict[str, str]:
    auth = await authenticate_card(site.pos, who.card, purpose)
    return {
        "mdtrt_cert_type": "03",
        "mdtrt_cert_no": card_cert(who.card.card_no, auth["card_token"]),
        "card_sn": who.card.card_sn,
    }


def now_text() -> str:
    return dt.datetime.now(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


async def register_input(
    site: Site, who: Holder, insutype: str = "310", **extra: Any
) -> dict[str, Any]:
    data = {
        "psn_no": who.psn_no,
        "insutype": insutype,
        "begntime": now_text(),
        **(await cert(site, who)),
        "ipt_otp_no": unique_code("OTP"),
        "atddr_no": "D001",
        "dr_name": "李医生",
        "dept_code": "0101",
        "dept_name": "内科",
        "caty": "A03",
        **extra,
    }
    return {"data": data}


async def register(site: Site, who: Holder, insutype: str = "310", **extra: Any) -> str:
    out = await site.client.ok("2201", await register_input(site, who, insutype, **extra))
    assert out["data"]["psn_no"] == who.psn_no
    return str(out["data"]["mdtrt_id"])


def fee(
    mdtrt_id: str,
    who: Holder,
    sn: str,
    code: str,
    pric: Any,
    cnt: Any,
    amount: Any,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "feedetl_sn": sn,
        "mdtrt_id": mdtrt_id,
        "psn_no": who.psn_no,
        "chrg_bchno": "B1",
        "rxno": "",
        "rx_circ_flag": "0",
        "fee_ocur_time": now_text(),
        "med_list_codg": code,
        "medins_list_codg": "H-" + code,
        "det_item_fee_sumamt": amount,
        "cnt": cnt,
        "pric": pric,
        "bilg_dept_codg": "0101",
        "prd_days": 1.5,
        **extra,
    }


def by_sn(output: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["feedetl_sn"]: row for row in output["result"]}


async def unsettled(db: asyncpg.Connection, site: Site, mdtrt_id: str) -> list[str]:
    lines = await visits.unsettled_lines(db, site.code, mdtrt_id, None)
    return [line.feedetl_sn for line in lines]


async def test_register_info_details_and_cancel(world: World, db: asyncpg.Connection) -> None:
    site, who = world.hospital, await holder(world)
    mdtrt_id = await register(site, who)
    visit = await visits.load_visit(db, site.code, mdtrt_id)
    assert (visit.kind, visit.status, visit.insutype, visit.med_type) == (
        "outpatient",
        "open",
        "310",
        "11",
    )
    assert visit.card_no == who.card.card_no
    info = await db.fetchval(
        "SELECT info FROM gateway_visits WHERE fixmedins_code = $1 AND mdtrt_id = $2",
        site.code,
        mdtrt_id,
    )
    assert "mdtrt_cert_no" not in info and "李医生" in info  # the card token is never kept

    await site.client.ok(
        "2203",
        {
            "mdtrtinfo": {
                "mdtrt_id": mdtrt_id,
                "psn_no": who.psn_no,
                "med_type": "11",
                "begntime": now_text(),
                "main_cond_dscr": "咳嗽三天",
                "dise_codg": "J06.900",
                "dise_name": "急性上呼吸道感染",
            },
            "diseinfo": [{"diag_type": "1", "diag_srt_no": 1, "diag_code": "J06.900"}],
        },
    )

    out = await site.client.ok(
        "2204",
        {
            "feedetail": [
                fee(mdtrt_id, who, "1", "A-AMOX", "12.00", 1, "12.00"),
                fee(mdtrt_id, who, "2", "B-CEF", 18, "2", 36),
                # Over the price ceiling (20.00), decimal count: 25.5 x 1.5 = 38.25.
                fee(mdtrt_id, who, "3", "B-CEF", "25.5", "1.5", "38.25"),
                fee(mdtrt_id, who, "4", "C-VIT", "0.333333", 3, "1.00"),
            ]
        },
    )
    rows = by_sn(out)
    assert rows["1"]["inscp_scp_amt"] == Decimal("12.00")
    assert rows["1"]["selfpay_prop"] == 0 and rows["1"]["chrgitm_lv"] == "A"
    assert rows["2"]["preselfpay_amt"] == Decimal("3.60")
    assert rows["2"]["inscp_scp_amt"] == Decimal("32.40")
    assert rows["2"]["selfpay_prop"] == Decimal("0.1")
    assert rows["2"]["pric_uplmt_amt"] == Decimal("20.00")
    three = rows["3"]
    assert (three["det_item_fee_sumamt"], three["cnt"], three["pric"]) == (
        Decimal("38.25"),
        Decimal("1.5"),
        Decimal("25.5"),
    )
    assert three["overlmt_amt"] == Decimal("8.25")  # r((2550 - 2000) fen x 1.5)
    assert three["preselfpay_amt"] == Decimal("3.00")
    assert three["inscp_scp_amt"] == Decimal("27.00")
    assert rows["4"]["fulamt_ownpay_amt"] == Decimal("1.00") and rows["4"]["selfpay_prop"] == 1
    assert await unsettled(db, site, mdtrt_id) == ["1", "2", "3", "4"]
    stored = await visits.unsettled_lines(db, site.code, mdtrt_id, "B1")
    assert [(line.price_e4, line.count_e4, line.total) for line in stored][2] == (
        25_500_000,
        15_000,
        3825,
    )

    await site.client.ok(
        "2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "0000", "psn_no": who.psn_no}}
    )
    assert await unsettled(db, site, mdtrt_id) == []
    await site.client.ok(
        "2202", {"data": {"psn_no": who.psn_no, "mdtrt_id": mdtrt_id, "ipt_otp_no": ""}}
    )
    assert (await visits.load_visit(db, site.code, mdtrt_id)).status == "cancelled"
    again = await site.client.call(
        "2204", {"feedetail": [fee(mdtrt_id, who, "5", "A-AMOX", 1, 1, 1)]}
    )
    assert again.code == "VISIT_CLOSED", again.body


async def test_settlement_marks_and_releases_lines(world: World, db: asyncpg.Connection) -> None:
    """The interface the settlement transactions use: unsettled lines by charge batch (with
    their versions, for the batch write's guard), released by a reversal."""
    site, who = world.hospital, await holder(world)
    mdtrt_id = await register(site, who)
    await site.client.ok(
        "2204",
        {
            "feedetail": [
                fee(mdtrt_id, who, "1", "A-AMOX", 10, 1, 10),
                fee(mdtrt_id, who, "2", "A-AMOX", 10, 2, 20, chrg_bchno="B2"),
            ]
        },
    )
    batch = await visits.unsettled_lines(db, site.code, mdtrt_id, "B2")
    assert [line.feedetl_sn for line in batch] == ["2"]
    visit, lines, versions = await visits.visit_with_unsettled_lines(db, site.code, mdtrt_id, None)
    assert visit.mdtrt_id == mdtrt_id
    assert [line.feedetl_sn for line in lines] == ["1", "2"] and len(versions) == 2
    _, only_b2, _ = await visits.visit_with_unsettled_lines(db, site.code, mdtrt_id, "B2")
    assert [line.feedetl_sn for line in only_b2] == ["2"]
    setl_id = unique_code("S")
    await db.execute(  # as the settlement's batch write marks them
        "UPDATE gateway_visit_lines SET setl_id = $3 WHERE fixmedins_code = $1 AND mdtrt_id = $2",
        site.code,
        mdtrt_id,
        setl_id,
    )
    assert await unsettled(db, site, mdtrt_id) == []
    nothing = await site.client.call(
        "2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "0000", "psn_no": who.psn_no}}
    )
    assert nothing.infcode == 0  # nothing unsettled to cancel
    cancel = await site.client.call("2202", {"data": {"psn_no": who.psn_no, "mdtrt_id": mdtrt_id}})
    assert cancel.code == "VISIT_HAS_SETTLEMENT", cancel.body
    assert await visits.release(db, setl_id) == 2
    assert await unsettled(db, site, mdtrt_id) == ["1", "2"]


async def test_pharmacy_purchase_opens_its_visit_with_2204(
    world: World, db: asyncpg.Connection
) -> None:
    site, who = world.pharmacy, await holder(world)
    mdtrt_id = unique_code("PH-")
    out = await site.client.ok(
        "2204",
        {"feedetail": [fee(mdtrt_id, who, "1", "B-CEF", "18.00", 3, "54.00", med_type="41")]},
    )
    assert by_sn(out)["1"]["preselfpay_amt"] == Decimal("5.40")
    visit = await visits.load_visit(db, site.code, mdtrt_id)
    assert (visit.kind, visit.med_type, visit.insutype, visit.psn_no) == (
        "pharmacy",
        "41",
        "310",
        who.psn_no,
    )
    more = await site.client.ok(
        "2204", {"feedetail": [fee(mdtrt_id, who, "2", "C-VIT", 20, 1, 20)]}
    )
    assert by_sn(more)["2"]["fulamt_ownpay_amt"] == Decimal("20.00")
    assert await unsettled(db, site, mdtrt_id) == ["1", "2"]
    # A hospital's visits are registered first (2201): an unknown mdtrt_id is not opened.
    at_hospital = await world.hospital.client.call(
        "2204", {"feedetail": [fee(unique_code("PH-"), who, "1", "A-AMOX", 1, 1, 1)]}
    )
    assert at_hospital.code == "VISIT_NOT_FOUND", at_hospital.body


async def test_a_2204s_answer_is_stored_by_its_own_transaction(
    world: World, db: asyncpg.Connection
) -> None:
    """The lines and the stored answer commit together (one commit, not two): a crash
    between them can leave neither the work without its answer nor the reverse."""
    site, who = world.pharmacy, await holder(world)
    mdtrt_id = unique_code("PH-")
    first = await site.client.call(
        "2204", {"feedetail": [fee(mdtrt_id, who, "1", "A-AMOX", 1, 1, 1)]}
    )
    assert first.infcode == 0, first.body
    row = await db.fetchrow(
        "SELECT l.created_msgid, l.xmin::text AS lines, m.xmin::text AS stored, m.answer"
        " FROM gateway_visit_lines l JOIN gateway_messages m"
        " ON m.fixmedins_code = l.fixmedins_code AND m.msgid = l.created_msgid"
        " WHERE l.fixmedins_code = $1 AND l.mdtrt_id = $2",
        site.code,
        mdtrt_id,
    )
    assert row is not None and row["lines"] == row["stored"]
    assert bytes(row["answer"]) == first.raw
    # A refusal rolls the work back and is stored on its own, as before.
    msgid = new_msgid(world.hospital.code)
    refused = await world.hospital.client.call(
        "2204", {"feedetail": [fee(unique_code("PH-"), who, "1", "A-AMOX", 1, 1, 1)]}, msgid=msgid
    )
    assert refused.code == "VISIT_NOT_FOUND"
    stored = await db.fetchval(
        "SELECT answer FROM gateway_messages WHERE fixmedins_code = $1 AND msgid = $2",
        world.hospital.code,
        msgid,
    )
    assert bytes(stored) == refused.raw


async def admit(site: Site, who: Holder, med_type: str = "21", **extra: Any) -> str:
    info = {
        "psn_no": who.psn_no,
        "insutype": extra.pop("insutype", "310"),
        "begntime": now_text(),
        **(await cert(site, who)),
        "med_type": med_type,
        "ipt_no": unique_code("IPT"),
        "adm_diag_dscr": "阑尾炎",
        "adm_bed": "12",
        **extra,
    }
    out = await site.client.ok(
        "2401", {"mdtrtinfo": info, "diseinfo": [{"diag_type": "1", "diag_code": "K35.900"}]}
    )
    return str(out["result"]["mdtrt_id"])


async def test_inpatient_stay_with_a_refund_line(world: World, db: asyncpg.Connection) -> None:
    site, who = world.hospital, await holder(world)
    mdtrt_id = await admit(site, who)
    visit = await visits.load_visit(db, site.code, mdtrt_id)
    assert (visit.kind, visit.med_type) == ("inpatient", "21")
    await site.client.ok(
        "2301",
        {
            "feedetail": [
                fee(mdtrt_id, who, "1", "A-AMOX", "1000.00", 3, "3000.00"),
                fee(mdtrt_id, who, "2", "B-CEF", "25.00", 4, "100.00"),
                fee(mdtrt_id, who, "3", "C-VIT", "30", 1, "30"),
            ]
        },
    )
    refund = await site.client.ok(
        "2301",
        {
            "feedetail": [
                fee(mdtrt_id, who, "4", "B-CEF", "25.00", -4, "-100.00", init_feedetl_sn="2")
            ]
        },
    )
    row = by_sn(refund)["4"]
    assert (row["det_item_fee_sumamt"], row["cnt"], row["overlmt_amt"]) == (
        Decimal("-100.00"),
        Decimal("-4"),
        Decimal("-20.00"),
    )
    assert await unsettled(db, site, mdtrt_id) == ["1", "3"]
    # A refund must take back the whole line, and only a line still unsettled.
    partial = await site.client.call(
        "2301",
        {
            "feedetail": [
                fee(mdtrt_id, who, "5", "A-AMOX", "1000", -1, "-1000", init_feedetl_sn="1")
            ]
        },
    )
    assert partial.code == "REFUND_MISMATCH", partial.body
    twice = await site.client.call(
        "2301",
        {"feedetail": [fee(mdtrt_id, who, "6", "B-CEF", "25", -4, "-100", init_feedetl_sn="2")]},
    )
    assert twice.code == "FEE_LINE_CLOSED", twice.body
    # Cancelling the refund line gives the line back.
    await site.client.ok(
        "2302", {"data": {"feedetl_sn": "4", "mdtrt_id": mdtrt_id, "psn_no": who.psn_no}}
    )
    assert await unsettled(db, site, mdtrt_id) == ["1", "2", "3"]
    outpatient = await site.client.call(
        "2204", {"feedetail": [fee(mdtrt_id, who, "9", "A-AMOX", 1, 1, 1)]}
    )
    assert outpatient.code == "VISIT_KIND_MISMATCH", outpatient.body
    negative = await site.client.call(
        "2204",
        {"feedetail": [fee(unique_code("X"), who, "9", "A-AMOX", 1, -1, -1, init_feedetl_sn="1")]},
    )
    assert negative.code == "INPUT_INVALID", negative.body

    await site.client.ok(
        "2402",
        {
            "dscginfo": {
                "mdtrt_id": mdtrt_id,
                "psn_no": who.psn_no,
                "insutype": "310",
                "endtime": now_text(),
                "dscg_way": "1",
            }
        },
    )
    visit = await visits.load_visit(db, site.code, mdtrt_id)
    assert visit.status == "discharged" and visit.endtime is not None
    assert await unsettled(db, site, mdtrt_id) == ["1", "2", "3"]


async def test_amount_not_price_times_count(world: World, db: asyncpg.Connection) -> None:
    site, who = world.hospital, await holder(world)
    mdtrt_id = await register(site, who)
    answer = await site.client.call(
        "2204",
        {
            "feedetail": [
                fee(mdtrt_id, who, "1", "A-AMOX", "12.00", 1, "12.00"),
                fee(mdtrt_id, who, "2", "A-AMOX", "0.333333", 3, "1.01"),  # 0.999999 -> 1.00
            ]
        },
    )
    assert answer.infcode == -1 and answer.code == "FEE_AMOUNT_MISMATCH", answer.body
    assert answer.body["output"] == {}
    assert await unsettled(db, site, mdtrt_id) == []  # nothing of the message was stored


@pytest.mark.parametrize(
    ("pric", "cnt", "amount"),
    [
        ("1.0000001", 1, "1.00"),  # pric: 7 decimals
        (1, "1.00001", "1.00"),  # cnt: 5 decimals
        (1, 1, "1.001"),  # yuan: 3 decimals
        (1, 1, 1.001),  # the same as a JSON number
        ("NaN", 1, 1),
    ],
)
async def test_too_many_decimals(
    world: World, db: asyncpg.Connection, pric: Any, cnt: Any, amount: Any
) -> None:
    site, who = world.hospital, await holder(world)
    mdtrt_id = await register(site, who)
    answer = await site.client.call(
        "2204", {"feedetail": [fee(mdtrt_id, who, "1", "A-AMOX", pric, cnt, amount)]}
    )
    assert answer.code == "AMOUNT_INVALID", answer.body


async def test_another_facilitys_visit_is_not_found(world: World) -> None:
    who = await holder(world)
    mdtrt_id = await register(world.hospital, who)
    other = world.other.client
    for infno, inputs in [
        ("2204", {"feedetail": [fee(mdtrt_id, who, "1", "A-AMOX", 1, 1, 1)]}),
        ("2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "0000", "psn_no": who.psn_no}}),
        ("2202", {"data": {"mdtrt_id": mdtrt_id, "psn_no": who.psn_no}}),
        (
            "2203",
            {"mdtrtinfo": {"mdtrt_id": mdtrt_id, "psn_no": who.psn_no, "med_type": "11"}},
        ),
    ]:
        answer = await other.call(infno, inputs)
        assert answer.code == "VISIT_NOT_FOUND", (infno, answer.body)


async def test_work_injury_case_choice(world: World, db: asyncpg.Connection) -> None:
    site = world.hospital
    who = await holder(world, insutypes=("410",))
    none = await site.client.call("2201", await register_input(site, who, "410"))
    assert none.code == "INJURY_CASE_INVALID", none.body

    async def case() -> str:
        created = await world.service.admin_ok(
            "POST",
            "/v1/injury-cases",
            {
                "psn_no": who.psn_no,
                "employer": "无锡机械厂",
                "injury_date": "2026-01-05",
                "valid_from": "2026-01-05",
                "valid_to": "2099-12-31",
            },
        )
        return str(created["case_id"])

    first = await case()
    mdtrt_id = await register(site, who, "410")
    assert (await visits.load_visit(db, site.code, mdtrt_id)).injury_case_id == first
    second = await case()
    several = await site.client.call("2201", await register_input(site, who, "410"))
    assert several.code == "INJURY_CASE_INVALID", several.body
    named = await register(site, who, "410", exp_content=f'{{"injury_case_id": "{second}"}}')
    assert (await visits.load_visit(db, site.code, named)).injury_case_id == second
    as_object = await register(site, who, "410", exp_content={"injury_case_id": first})
    assert (await visits.load_visit(db, site.code, as_object)).injury_case_id == first
    stranger = await holder(world, insutypes=("410",))
    foreign = await site.client.call(
        "2201", await register_input(site, stranger, "410", exp_content={"injury_case_id": first})
    )
    assert foreign.code == "INJURY_CASE_INVALID", foreign.body


async def test_maternity_delivery_type(world: World, db: asyncpg.Connection) -> None:
    site = world.hospital
    who = await holder(world, insutypes=("510",), gend="2")
    mdtrt_id = await register(site, who, "510")
    assert (await visits.load_visit(db, site.code, mdtrt_id)).med_type == "51"
    await site.client.ok(
        "2203",
        {
            "mdtrtinfo": {
                "mdtrt_id": mdtrt_id,
                "psn_no": who.psn_no,
                "med_type": "52",
                "matn_type": "1",
                "exp_content": '{"delivery_type": "cesarean"}',
            }
        },
    )
    visit = await visits.load_visit(db, site.code, mdtrt_id)
    assert (visit.med_type, visit.delivery_type) == ("52", "cesarean")
    stay = await admit(site, who, "52", insutype="510", exp_content={"delivery_type": "normal"})
    assert (await visits.load_visit(db, site.code, stay)).delivery_type == "normal"
    bad = await site.client.call(
        "2203",
        {
            "mdtrtinfo": {
                "mdtrt_id": mdtrt_id,
                "psn_no": who.psn_no,
                "med_type": "52",
                "exp_content": '{"delivery_type": "breech"}',
            }
        },
    )
    assert bad.code == "INPUT_INVALID", bad.body


async def test_registration_checks(world: World) -> None:
    site = world.hospital
    who = await holder(world)
    not_enrolled = await site.client.call("2201", await register_input(site, who, "390"))
    assert not_enrolled.code == "INSURANCE_NOT_ACTIVE", not_enrolled.body
    mother = await holder(world, insutypes=("510",), gend="2")
    no_agreement = await world.no_maternity.client.call(
        "2201", await register_input(world.no_maternity, mother, "510")
    )
    assert no_agreement.code == "NO_AGREEMENT", no_agreement.body
    pharmacy_type = await site.client.call(
        "2201", await register_input(site, who, "310", med_type="41")
    )
    assert pharmacy_type.code == "MED_TYPE_NOT_ALLOWED", pharmacy_type.body
    someone_else = await holder(world)
    data = await register_input(site, who)
    data["data"]["psn_no"] = someone_else.psn_no
    mismatch = await site.client.call("2201", data)
    assert mismatch.code == "CERT_PERSON_MISMATCH", mismatch.body
    voucher = await register_input(site, who)
    voucher["data"]["mdtrt_cert_type"] = "01"
    assert (await site.client.call("2201", voucher)).code == "CERT_TYPE_NOT_ALLOWED"
    lost = await register_input(site, who)
    await world.counter.call("POST", f"/v1/cards/{who.card.card_no}/report-loss")
    card_lost = await site.client.call("2201", lost)
    assert card_lost.code == "CARD_NOT_ACTIVE", card_lost.body


async def test_bounds_of_the_input(world: World) -> None:
    site, who = world.hospital, await holder(world)
    mdtrt_id = await register(site, who)
    too_many = [fee(mdtrt_id, who, str(n), "A-AMOX", 1, 1, 1) for n in range(501)]
    answer = await site.client.call("2204", {"feedetail": too_many})
    assert answer.code == "INPUT_INVALID", answer.body
    for bad in [
        {"begntime": "2026-13-01 10:00:00"},
        {"begntime": "1999-12-31 10:00:00"},
        {"begntime": "2026/01/01"},
        {"ipt_otp_no": "x" * 31},
        {"insutype": "999"},
    ]:
        inputs = await register_input(site, who)
        inputs["data"].update(bad)
        answer = await site.client.call("2201", inputs)
        assert answer.code == "INPUT_INVALID", (bad, answer.body)
    long_sn = await site.client.call(
        "2204", {"feedetail": [fee(mdtrt_id, who, "s" * 31, "A-AMOX", 1, 1, 1)]}
    )
    assert long_sn.code == "INPUT_INVALID", long_sn.body
    twice = await site.client.call(
        "2204",
        {
            "feedetail": [
                fee(mdtrt_id, who, "1", "A-AMOX", 1, 1, 1),
                fee(mdtrt_id, who, "1", "A-AMOX", 1, 1, 1),
            ]
        },
    )
    assert twice.code == "INPUT_INVALID", twice.body
    nul = fee(mdtrt_id, who, "1", "A-AMOX", 1, 1, 1, memo="a\x00b")
    answer = await site.client.call("2204", {"feedetail": [nul]})
    assert answer.code == "INPUT_INVALID", answer.body
    nul_info = await register_input(site, who, his_note={"n": ["a\x00b"]})
    answer = await site.client.call("2201", nul_info)
    assert answer.code == "INPUT_INVALID", answer.body
    not_a_day = fee(mdtrt_id, who, "1", "A-AMOX", 1, 1, 1, fee_ocur_time="2026-02-30 10:00:00")
    answer = await site.client.call("2204", {"feedetail": [not_a_day]})
    assert answer.code == "INPUT_INVALID", answer.body
    unknown = await site.client.call(
        "2204", {"feedetail": [fee(mdtrt_id, who, "1", "Z-NONE", 1, 1, 1)]}
    )
    assert unknown.code == "UNKNOWN_ITEM", unknown.body


async def test_a_line_uploaded_again(world: World, db: asyncpg.Connection) -> None:
    site, who = world.hospital, await holder(world)
    mdtrt_id = await register(site, who)
    line = fee(mdtrt_id, who, "1", "B-CEF", 18, 2, 36)
    first = await site.client.ok("2204", {"feedetail": [line]})
    same = await site.client.ok("2204", {"feedetail": [line]})  # another msgid, same line
    assert same == first
    changed = await site.client.call(
        "2204", {"feedetail": [fee(mdtrt_id, who, "1", "B-CEF", 18, 3, 54)]}
    )
    assert changed.code == "FEEDETL_SN_CONFLICT", changed.body
    await site.client.ok(
        "2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "B1", "psn_no": who.psn_no}}
    )
    replaced = await site.client.ok(
        "2204", {"feedetail": [fee(mdtrt_id, who, "1", "B-CEF", 18, 3, 54)]}
    )
    assert by_sn(replaced)["1"]["det_item_fee_sumamt"] == Decimal("54.00")
    assert await unsettled(db, site, mdtrt_id) == ["1"]


async def _forget_answer(db: asyncpg.Connection, site: Site, msgid: str) -> None:
    """As if the service stopped between the handler's commit and the stored answer."""
    deleted = await db.execute(
        "DELETE FROM gateway_messages WHERE fixmedins_code = $1 AND msgid = $2", site.code, msgid
    )
    assert deleted == "DELETE 1"


async def test_a_message_run_again_does_its_work_once(world: World, db: asyncpg.Connection) -> None:
    site, who = world.hospital, await holder(world)
    registration = site.client.envelope("2201", await register_input(site, who))
    first = await site.client.post(registration)
    await _forget_answer(db, site, registration["msgid"])
    second = await site.client.post(registration)
    assert second.body["output"] == first.body["output"], (first.body, second.body)
    mdtrt_id = first.body["output"]["data"]["mdtrt_id"]
    count = "SELECT count(*) FROM gateway_visits WHERE psn_no = $1"
    assert await db.fetchval(count, who.psn_no) == 1

    upload = site.client.envelope(
        "2204",
        {
            "feedetail": [
                fee(mdtrt_id, who, "1", "A-AMOX", 12, 1, 12),
                fee(mdtrt_id, who, "2", "B-CEF", "25.5", "1.5", "38.25"),
            ]
        },
    )
    first = await site.client.post(upload)
    await _forget_answer(db, site, upload["msgid"])
    second = await site.client.post(upload)
    assert second.body["infcode"] == 0 and second.body["output"] == first.body["output"]
    assert await unsettled(db, site, mdtrt_id) == ["1", "2"]

    pharmacy = world.pharmacy
    own_id = unique_code("PH-")
    purchase = pharmacy.client.envelope(
        "2204", {"feedetail": [fee(own_id, who, "1", "A-AMOX", 12, 1, 12)]}
    )
    first = await pharmacy.client.post(purchase)
    await _forget_answer(db, pharmacy, purchase["msgid"])
    second = await pharmacy.client.post(purchase)
    assert second.body["output"] == first.body["output"], second.body
    assert await unsettled(db, pharmacy, own_id) == ["1"]

    cancel = site.client.envelope(
        "2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "0000", "psn_no": who.psn_no}}
    )
    first = await site.client.post(cancel)
    await _forget_answer(db, site, cancel["msgid"])
    second = await site.client.post(cancel)
    assert (first.body["infcode"], second.body["infcode"]) == (0, 0)
    assert await unsettled(db, site, mdtrt_id) == []


async def test_two_tries_of_one_message_at_once(world: World, db: asyncpg.Connection) -> None:
    """A retry sent while the first try still runs: one visit, one set of lines, and both
    tries answered alike (or the second told to retry, never a second visit)."""
    site, who = world.hospital, await holder(world)
    registration = site.client.envelope("2201", await register_input(site, who))
    answers = await asyncio.gather(*(site.client.post(registration) for _ in range(3)))
    ok = [a.body["output"] for a in answers if a.body["infcode"] == 0]
    assert ok and all(out == ok[0] for out in ok), [a.body for a in answers]
    count = "SELECT count(*) FROM gateway_visits WHERE psn_no = $1"
    assert await db.fetchval(count, who.psn_no) == 1
    mdtrt_id = ok[0]["data"]["mdtrt_id"]

    lines = [fee(mdtrt_id, who, str(n), "A-AMOX", 12, 1, 12) for n in range(1, 21)]
    upload = site.client.envelope("2204", {"feedetail": lines})
    others = [
        site.client.envelope("2204", {"feedetail": [fee(mdtrt_id, who, f"x{n}", "C-VIT", 1, 1, 1)]})
        for n in range(3)
    ]
    answers = await asyncio.gather(
        *(site.client.post(upload) for _ in range(3)), *(site.client.post(o) for o in others)
    )
    assert all(a.body["infcode"] == 0 for a in answers[3:]), [a.body for a in answers]
    ok = [a.body["output"] for a in answers[:3] if a.body["infcode"] == 0]
    assert ok and all(out == ok[0] for out in ok)
    assert len(await unsettled(db, site, mdtrt_id)) == 23


async def test_registration_by_identity_number(world: World, db: asyncpg.Connection) -> None:
    site, who = world.hospital, await holder(world)
    inputs = await register_input(site, who)
    inputs["data"].update(mdtrt_cert_type="02", mdtrt_cert_no=who.person["certno_full"], card_sn="")
    out = await site.client.ok("2201", inputs)
    visit = await visits.load_visit(db, site.code, out["data"]["mdtrt_id"])
    assert (visit.psn_no, visit.card_no) == (who.psn_no, None)
    info = await db.fetchval(
        "SELECT info::text FROM gateway_visits WHERE fixmedins_code = $1 AND mdtrt_id = $2",
        site.code,
        visit.mdtrt_id,
    )
    assert who.person["certno_full"] not in info  # the identity number is not kept


async def test_undo_message_for_a_reversal_by_message(world: World, db: asyncpg.Connection) -> None:
    """What 2601 uses: a fee upload's unsettled lines are cancelled, a registration's visit
    is cancelled, a visit with a settlement is refused, a message that did nothing here
    is reported so."""
    site, who = world.hospital, await holder(world)
    registration = site.client.envelope("2201", await register_input(site, who))
    mdtrt_id = (await site.client.post(registration)).body["output"]["data"]["mdtrt_id"]
    first = site.client.envelope(
        "2204", {"feedetail": [fee(mdtrt_id, who, "1", "A-AMOX", 1, 1, 1)]}
    )
    second = site.client.envelope(
        "2204", {"feedetail": [fee(mdtrt_id, who, "2", "A-AMOX", 2, 1, 2)]}
    )
    for message in (first, second):
        assert (await site.client.post(message)).body["infcode"] == 0
    async with db.transaction():
        assert await visits.undo_message(db, site.code, first["msgid"], "UNDO1")
    assert await unsettled(db, site, mdtrt_id) == ["2"]
    async with db.transaction():
        assert not await visits.undo_message(db, site.code, unique_code("NEVER"), "UNDO2")
    setl_id = unique_code("S")
    await db.execute(
        "UPDATE gateway_visit_lines SET setl_id = $3 WHERE fixmedins_code = $1"
        " AND mdtrt_id = $2 AND feedetl_sn = '2'",
        site.code,
        mdtrt_id,
        setl_id,
    )
    with pytest.raises(CardsvcError) as refused:
        async with db.transaction():
            await visits.undo_message(db, site.code, registration["msgid"], "UNDO3")
    assert refused.value.code == "VISIT_HAS_SETTLEMENT"
    await visits.release(db, setl_id)
    async with db.transaction():
        assert await visits.undo_message(db, site.code, registration["msgid"], "UNDO4")
    visit = await visits.load_visit(db, site.code, mdtrt_id)
    assert (visit.status, visit.closed_msgid) == ("cancelled", "UNDO4")
    assert await unsettled(db, site, mdtrt_id) == []


async def _settling(db: asyncpg.Connection, site: Any, mdtrt_id: str, sn: str) -> str:
    """What a settlement's batch write does to a line, left uncommitted in ``db``'s open
    transaction: the settlement is being written."""
    setl_id = unique_code("S")
    await db.execute(
        "UPDATE gateway_visit_lines SET setl_id = $3 WHERE fixmedins_code = $1"
        " AND mdtrt_id = $2 AND feedetl_sn = $4",
        site.code,
        mdtrt_id,
        setl_id,
        sn,
    )
    return setl_id


async def test_2203_changing_what_a_settlement_applies_renews_the_lines_versions(
    world: World, db: asyncpg.Connection
) -> None:
    """A settlement marks the lines it read only if each is still that version: a 2203
    changing the visit type (or the delivery type) between a settlement's read and its
    write gives every unsettled line a new version, so that settlement is refused and its
    retry applies the new type. The same 2203 sent again changes nothing."""
    site, who = world.hospital, await holder(world, insutypes=("510",), gend="2")
    mdtrt_id = await register(site, who, "510")
    await site.client.ok("2204", {"feedetail": [fee(mdtrt_id, who, "1", "A-AMOX", 1, 1, 1)]})
    _, _, before = await visits.visit_with_unsettled_lines(db, site.code, mdtrt_id, None)
    info = {
        "mdtrtinfo": {
            "mdtrt_id": mdtrt_id,
            "psn_no": who.psn_no,
            "med_type": "52",
            "matn_type": "1",
            "exp_content": '{"delivery_type": "normal"}',
        }
    }
    await site.client.ok("2203", info)
    _, _, after = await visits.visit_with_unsettled_lines(db, site.code, mdtrt_id, None)
    assert [v.tid for v in after] != [v.tid for v in before]
    assert all(a.xmin != b.xmin for a, b in zip(after, before, strict=True))
    await site.client.ok("2203", info)
    _, _, again = await visits.visit_with_unsettled_lines(db, site.code, mdtrt_id, None)
    assert again == after


async def test_a_registration_is_not_cancelled_under_a_settlement_being_written(
    world: World, db: asyncpg.Connection
) -> None:
    """2202 checks for settled lines after holding them: a settlement committing meanwhile
    is seen, and the visit is not cancelled with a settled line in it."""
    site, who = world.hospital, await holder(world)
    mdtrt_id = await register(site, who)
    await site.client.ok("2204", {"feedetail": [fee(mdtrt_id, who, "1", "A-AMOX", 1, 1, 1)]})
    tx = db.transaction()
    await tx.start()
    await _settling(db, site, mdtrt_id, "1")
    cancelling = asyncio.create_task(
        site.client.call("2202", {"data": {"mdtrt_id": mdtrt_id, "psn_no": who.psn_no}})
    )
    await asyncio.sleep(0.5)
    await tx.commit()
    refused = await cancelling
    assert refused.code == "VISIT_HAS_SETTLEMENT", refused.body
    visit = await visits.load_visit(db, site.code, mdtrt_id)
    assert visit.status == "open"


def presettle(who: Holder, mdtrt_id: str, insutype: str, amount: str, certificate: Any) -> Any:
    return {
        "data": {
            "psn_no": who.psn_no,
            "mdtrt_id": mdtrt_id,
            "insutype": insutype,
            "med_type": "41",
            "medfee_sumamt": amount,
            "chrg_bchno": "0000",
            "acct_used_flag": "0",
            "psn_setlway": "01",
            **certificate,
        }
    }


async def test_a_pharmacys_2204_says_nothing_about_the_person(
    world: World, db: asyncpg.Connection
) -> None:
    """No certificate travels with 2204: a pharmacy opening a visit with it learns nothing
    of the psn_no it names (nobody, not insured in the scheme, no injury case, insured),
    and the person is checked when their card is presented, at pre-settlement."""
    site = world.pharmacy
    insured = await holder(world)  # 310 only
    worker = await holder(world, insutypes=("410",))  # no injury case
    nobody = Holder({**insured.person, "psn_no": insured.psn_no[:6] + "9999999999"}, insured.card)
    opened: dict[tuple[str, str], str] = {}
    answers: dict[str, list[Any]] = {"310": [], "410": []}
    for who, insutype in [
        (nobody, "310"),
        (insured, "310"),
        (nobody, "410"),
        (insured, "410"),
        (worker, "410"),
    ]:
        mdtrt_id = unique_code("PH-")
        line = fee(mdtrt_id, who, "1", "C-VIT", "20", 1, "20", med_type="41", insutype=insutype)
        answer = await site.client.call("2204", {"feedetail": [line]})
        assert answer.infcode == 0, answer.body
        rows = answer.body["output"]["result"]
        answers[insutype].append([{k: v for k, v in r.items() if k != "mdtrt_id"} for r in rows])
        opened[(who.psn_no, insutype)] = mdtrt_id
    for insutype, same in answers.items():
        assert all(a == same[0] for a in same), (insutype, same)
    entry = await db.fetchval(
        "SELECT data FROM audit_log WHERE action = 'visit.registered' AND object_id = $1",
        f"{site.code}/{opened[(nobody.psn_no, '310')]}",
    )
    assert '"certified":false' in entry.replace(" ", "")
    # The card at pre-settlement: the person's eligibility, with the codes of a registration.
    for who, insutype, code in [
        (insured, "410", "INSURANCE_NOT_ACTIVE"),
        (worker, "410", "INJURY_CASE_INVALID"),
    ]:
        mdtrt_id = opened[(who.psn_no, insutype)]
        refused = await site.client.call(
            "2206", presettle(who, mdtrt_id, insutype, "20", await cert(site, who))
        )
        assert refused.code == code, refused.body
    identify = await cert(site, insured)
    ok = await site.client.ok(
        "2206", presettle(insured, opened[(insured.psn_no, "310")], "310", "20", identify)
    )
    assert ok["setlinfo"]["medfee_sumamt"] == Decimal("20")
    # Nobody's visit is not settled with somebody's card: the card names another person.
    stranger = await site.client.call(
        "2206", presettle(nobody, opened[(nobody.psn_no, "310")], "310", "20", identify)
    )
    assert stranger.code == "CERT_PERSON_MISMATCH", stranger.body


async def test_a_pharmacy_work_injury_visit_takes_the_case_at_settlement(world: World) -> None:
    """Opened by 2204 without naming the case, a 410 purchase settles under the person's
    only valid approved case, found once the card shows the person."""
    site = world.pharmacy
    worker = await holder(world, insutypes=("410",))
    await world.service.admin_ok(
        "POST",
        "/v1/injury-cases",
        {
            "psn_no": worker.psn_no,
            "employer": "无锡机械厂",
            "injury_date": "2026-01-05",
            "valid_from": "2026-01-05",
            "valid_to": "2099-12-31",
        },
    )
    mdtrt_id = unique_code("PH-")
    line = fee(mdtrt_id, worker, "1", "W-SUT", "30", 1, "30", med_type="41", insutype="410")
    await site.client.ok("2204", {"feedetail": [line]})
    identify = await cert(site, worker)
    out = await site.client.ok("2206", presettle(worker, mdtrt_id, "410", "30", identify))
    assert out["setlinfo"]["medfee_sumamt"] == Decimal("30")
