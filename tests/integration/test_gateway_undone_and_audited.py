"""A registration or fee message that a 2601 undid before it arrived does nothing (2201,
2401, 2204, 2301: MSGID_UNDONE), and what the gateway reveals or changes is in the audit
log with the HIS operator and the message: pre-settlements (2206/2303), changes of a
visit's type (2203), fee uploads and refunds (2204/2301). (9102 downloads:
test_gateway_exactly_once.)"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
import pytest

from cardsvc.national import visits
from tests.integration import test_gateway_visits as visit_tests
from tests.integration.test_gateway_visits import (
    Holder,
    Site,
    World,
    admit,
    cert,
    fee,
    holder,
    now_text,
    register,
    register_input,
    unsettled,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

# The visit tests' fixtures: a hospital with its client and card reader, and a connection.
world = visit_tests.world
db = visit_tests.db


async def _undo(site: Site, who: Holder, omsgid: str, oinfno: str) -> None:
    out = await site.client.ok(
        "2601", {"data": {"psn_no": who.psn_no, "omsgid": omsgid, "oinfno": oinfno}}
    )
    assert out["result"]["outcome"] == "none"  # it had not arrived


async def _admission(site: Site, who: Holder) -> dict[str, Any]:
    info = {
        "psn_no": who.psn_no,
        "insutype": "310",
        "begntime": now_text(),
        **(await cert(site, who)),
        "med_type": "21",
        "ipt_no": "IPT-LATE",
    }
    return site.client.envelope("2401", {"mdtrtinfo": info})


async def test_a_registration_undone_before_it_arrived_opens_no_visit(
    world: World, db: asyncpg.Connection
) -> None:
    site, who = world.hospital, await holder(world)
    for oinfno, late in (
        ("2201", site.client.envelope("2201", await register_input(site, who))),
        ("2401", await _admission(site, who)),
    ):
        await _undo(site, who, late["msgid"], oinfno)
        answer = await site.client.post(late)
        assert (answer.body["infcode"], answer.code) == (-1, "MSGID_UNDONE"), answer.body
        assert await visits.visit_created_by(db, site.code, late["msgid"]) is None
        again = await site.client.post(late, site.client.headers())  # stored: the same refusal
        assert again.raw == answer.raw


async def test_fee_lines_undone_before_they_arrived_are_not_stored(
    world: World, db: asyncpg.Connection
) -> None:
    site, who = world.hospital, await holder(world)
    mdtrt_id = await register(site, who)
    late = site.client.envelope("2204", {"feedetail": [fee(mdtrt_id, who, "1", "A-AMOX", 1, 1, 1)]})
    await _undo(site, who, late["msgid"], "2204")
    answer = await site.client.post(late)
    assert answer.code == "MSGID_UNDONE", answer.body
    assert await unsettled(db, site, mdtrt_id) == []

    stay = await admit(site, who)
    await site.client.ok("2301", {"feedetail": [fee(stay, who, "1", "B-CEF", 25, 4, 100)]})
    refund = site.client.envelope(
        "2301",
        {"feedetail": [fee(stay, who, "2", "B-CEF", 25, -4, -100, init_feedetl_sn="1")]},
    )
    await _undo(site, who, refund["msgid"], "2301")
    answer = await site.client.post(refund)
    assert answer.code == "MSGID_UNDONE", answer.body
    assert await unsettled(db, site, stay) == ["1"]  # not refunded


async def _audited(db: asyncpg.Connection, site: Site, mdtrt_id: str) -> list[tuple[str, Any]]:
    rows = await db.fetch(
        "SELECT actor, action, data FROM audit_log WHERE object_type = 'visit'"
        " AND object_id = $1 ORDER BY at, seq",
        f"{site.code}/{mdtrt_id}",
    )
    assert {r["actor"] for r in rows} == {f"gateway:{site.client.paasid}"}
    return [(r["action"], msgspec.json.decode(r["data"])) for r in rows]


def _operator(data: dict[str, Any], infno: str) -> None:
    assert (data["opter"], data["opter_name"], data["opter_type"], data["infno"]) == (
        "OP001",
        "测试操作员",
        "1",
        infno,
    )
    assert data["msgid"]


async def test_visit_type_changes_uploads_refunds_and_previews_are_audited(
    world: World, db: asyncpg.Connection
) -> None:
    site = world.hospital
    mother = await holder(world, insutypes=("510",), gend="2")
    mdtrt_id = await register(site, mother, "510")
    info = {"mdtrt_id": mdtrt_id, "psn_no": mother.psn_no, "med_type": "52"}
    exp = {"exp_content": '{"delivery_type": "cesarean"}'}
    await site.client.ok("2203", {"mdtrtinfo": {**info, **exp}})
    await site.client.ok("2203", {"mdtrtinfo": {**info, **exp}})  # changes nothing more
    entries = await _audited(db, site, mdtrt_id)
    assert [action for action, _ in entries] == ["visit.registered", "visit.updated"]
    changed = entries[1][1]
    _operator(changed, "2203")
    assert changed["med_type"] == {"from": "51", "to": "52"}
    assert changed["delivery_type"] == {"from": None, "to": "cesarean"}

    who = await holder(world)
    visit = await register(site, who)
    upload = {
        "feedetail": [
            fee(visit, who, "1", "A-AMOX", 12, 1, 12),
            fee(visit, who, "2", "C-VIT", 1, 3, 3),
        ]
    }
    await site.client.ok("2204", upload)
    await site.client.ok("2204", upload)  # a new message, the same lines: nothing stored
    data = {
        "psn_no": who.psn_no,
        **(await cert(site, who)),
        "med_type": "11",
        "medfee_sumamt": 15,
        "mdtrt_id": visit,
        "chrg_bchno": "0000",
        "acct_used_flag": "1",
        "insutype": "310",
    }
    await site.client.ok("2206", {"data": data})
    entries = await _audited(db, site, visit)
    assert [action for action, _ in entries] == [
        "visit.registered",
        "visit.fees_uploaded",
        "settlement.previewed",
    ]
    uploaded, previewed = entries[1][1], entries[2][1]
    _operator(uploaded, "2204")
    assert (uploaded["lines"], uploaded["total"]) == (2, 1500)
    _operator(previewed, "2206")
    assert (previewed["psn_no"], previewed["mdtrt_cert_type"], previewed["medfee_sumamt"]) == (
        who.psn_no,
        "03",
        1500,
    )

    stay = await admit(site, who)
    await site.client.ok("2301", {"feedetail": [fee(stay, who, "1", "B-CEF", 25, 4, 100)]})
    await site.client.ok(
        "2301",
        {"feedetail": [fee(stay, who, "2", "B-CEF", 25, -4, -100, init_feedetl_sn="1")]},
    )
    entries = await _audited(db, site, stay)
    assert [action for action, _ in entries] == [
        "visit.registered",
        "visit.fees_uploaded",
        "visit.fees_refunded",
        "visit.fees_uploaded",
    ]
    _operator(entries[2][1], "2301")
    assert entries[2][1]["feedetl_sns"] == ["1"]
    assert (entries[3][1]["lines"], entries[3][1]["total"]) == (1, -10000)
