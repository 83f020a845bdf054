"""The operators' lists and actions through the HTTP API, for real: searches and paging,
a person's overview with its cards' status history, credit ratings with their history,
held settlements in review, handled flags, clearing runs, audit entries, the fund
report's breakdowns and the public fund report (aggregates only)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from cardsvc import clock
from cardsvc.listing import page_sql
from cardsvc.paging import parse_page
from cardsvc.persons.search import person_filter
from cardsvc.privacy import DataProtector
from cardsvc.settlement.listing import (
    SETTLEMENT_COLUMNS,
    SETTLEMENT_SORTS,
    SettlementFilter,
    settlement_filter,
)
from tests.integration.test_identity_privacy import _visible, assert_not_rebuildable
from tests.support.api import (
    POLICY_CATALOG,
    Patient,
    Service,
    credit,
    issue_card,
    lines,
    patient,
    unique_code,
)
from tests.support.operators import TestOperator, create_operator

pytestmark = pytest.mark.asyncio(loop_scope="session")

FEE = lines(("A-AMOX", 100000, 3), ("B-CEF", 2500, 4), ("C-VIT", 3000, 1))
# Days of their own (no other test settles on them): moved there, settlements are this
# module's alone in a clearing run and a published report.
CLEARING_DAY = dt.date(2022, 5, 17)
REPORT_DAY = dt.date(2022, 5, 18)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def catalog(service: Service) -> None:
    await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})


async def _get(service: Service, path: str) -> Any:
    return await service.admin_ok("GET", path)


async def _as(service: Service, who: TestOperator, method: str, path: str, body: Any) -> Any:
    headers = {"Authorization": f"Bearer {who.token}"}
    async with service.http.request(
        method, service.base_url + path, json=body, headers=headers
    ) as resp:
        return resp.status, msgspec.json.decode(await resp.read())


async def _raw(service: Service, path: str, *, admin: bool = True) -> tuple[int, Any, bytes]:
    headers = {"Authorization": f"Bearer {service.admin_token}"} if admin else {}
    async with service.http.get(service.base_url + path, headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


async def _shift(service: Service, table: str, column: str, key: str, ids: list[str], day: Any):
    conn = await asyncpg.connect(service.database_url)
    try:
        await conn.execute(
            f"UPDATE {table} SET {column} = $2 WHERE {key} = ANY($1::text[])", ids, day
        )
    finally:
        await conn.close()


async def _patient_at(service: Service, **facility: Any) -> tuple[str, Patient]:
    created = await service.facility(level="3", **facility)
    pos = await service.terminal("pos", created["fixmedins_code"])
    counter = await service.terminal("counter")
    return created["fixmedins_code"], await patient(service, pos, counter, balance=50000)


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/v1/persons?page_size=201", "page_size"),
        ("/v1/persons?page=0", "page"),
        ("/v1/persons?sort=certno_hash", "sort"),
        ("/v1/persons?q=" + "x" * 65, "q"),
        ("/v1/facilities?credit_rating=E", "credit_rating"),
        ("/v1/terminals?kind=atm", "kind"),
        ("/v1/settlements?from=2025-01-01&to=2026-01-02", "to"),
        ("/v1/settlements?psn_no=12", "psn_no"),
        ("/v1/supervision/flags?handled=maybe", "handled"),
        ("/v1/supervision/flags?rule=NOPE", "rule"),
        ("/v1/reviews?status=open", "status"),
        ("/v1/clearing/runs?from=2026-02-30", "from"),
        ("/v1/audit/entries?sort=-data", "sort"),
        ("/v1/public-reports?page_size=1000", "page_size"),
        ("/public/reports?page=x", "page"),
    ],
)
async def test_a_bad_list_query_is_422_naming_the_parameter(
    service: Service, path: str, parameter: str
):
    status, _, raw = await _raw(service, path)
    body = msgspec.json.decode(raw)
    assert status == 422, body
    assert body["error"]["code"] == "QUERY_INVALID"
    assert body["error"]["details"] == {"parameter": parameter}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/audit/entries?from=0001-01-01&to=0001-01-01",
        "/v1/audit/entries?to=0001-01-05",
        "/v1/settlements?from=0001-01-01&to=0001-12-31",
    ],
)
async def test_dates_at_the_ends_of_the_calendar_are_empty_not_errors(service: Service, path: str):
    status, _, raw = await _raw(service, path)
    assert status == 200, raw


async def test_persons_are_found_by_number_name_prefix_and_psn_no_masked(service: Service):
    name = "欧阳" + unique_code("")[:4]  # a unique name: 欧阳 and four characters
    people = [await service.person(psn_name=name + suffix) for suffix in ("甲", "乙", "丙")]
    found = await _get(service, f"/v1/persons?q={name}&sort=-psn_no&page_size=2")
    assert found["total"] == 3 and found["page_size"] == 2 and len(found["items"]) == 2
    assert [p["psn_no"] for p in found["items"]] == sorted(
        (p["psn_no"] for p in people), reverse=True
    )[:2]
    second = await _get(service, f"/v1/persons?q={name}&sort=-psn_no&page_size=2&page=2")
    assert len(second["items"]) == 1 and second["total"] == 3
    assert (await _get(service, f"/v1/persons?q={name}乙"))["total"] == 1

    one = people[0]
    by_number = await _get(service, f"/v1/persons?q={one['certno_full']}")
    assert [p["psn_no"] for p in by_number["items"]] == [one["psn_no"]]
    shown = by_number["items"][0]["certno"]
    assert shown == one["certno"] and "*" in shown and shown != one["certno_full"]
    _, _, raw = await _raw(service, f"/v1/persons?q={one['certno_full']}")
    assert one["certno_full"].encode() not in raw
    by_psn = await _get(service, f"/v1/persons?q={one['psn_no']}")
    assert by_psn["total"] == 1 and by_psn["items"][0]["psn_name"] == name + "甲"


async def test_overview_has_cards_with_their_status_history(service: Service, catalog):
    _code, p = await _patient_at(service)
    await p.settle("310", "11", lines(("A-AMOX", 1000, 1)))
    counter = await service.terminal("counter")
    await counter.call("POST", f"/v1/cards/{p.card.card_no}/report-loss")
    await credit(service, p.psn_no, 1200)
    view = await _get(service, f"/v1/persons/{p.psn_no}/overview")
    assert view["person"]["psn_no"] == p.psn_no and "*" in view["person"]["certno"]
    assert [i["insutype"] for i in view["insurances"]] == ["310"]
    assert view["accounts"]["balance"] == view["person"]["balc"]
    assert [c["amount"] for c in view["credits"]][:2] == [1200, 50000]
    (card,) = view["cards"]
    assert card["card_no"] == p.card.card_no and card["status"] == "loss_reported"
    assert [(h["action"], h["from"], h["to"]) for h in card["history"]] == [
        ("card.issued", None, "issued"),
        ("card.activate", "issued", "active"),
        ("card.report-loss", "active", "loss_reported"),
    ]
    assert all(h["actor"].startswith("terminal:") for h in card["history"])
    assert [s["status"] for s in view["settlements"]] == ["settled"]
    status, _, _ = await _raw(service, "/v1/persons/3202009999999999/overview")
    assert status == 404


async def test_facilities_credit_rating_changes_with_a_reason_and_a_history(service: Service):
    tag = unique_code("Q")
    hospital = await service.facility(fixmedins_code=tag + "H", fixmedins_name=f"{tag}医院")
    await service.facility(
        fixmedins_code=tag + "P", fixmedins_name=f"{tag}药房", type="pharmacy", level=None
    )
    listed = await _get(service, f"/v1/facilities?q={tag}&sort=-fixmedins_code")
    assert [f["fixmedins_code"] for f in listed["items"]] == [tag + "P", tag + "H"]
    only = await _get(service, f"/v1/facilities?q={tag}&type=pharmacy")
    assert only["total"] == 1 and only["items"][0]["type"] == "pharmacy"

    code = hospital["fixmedins_code"]
    reviewer = await create_operator(service.database_url, ("reviewer",), name="审核员甲")
    path = f"/v1/facilities/{code}/credit-rating"
    status, changed = await _as(
        service, reviewer, "POST", path, {"credit_rating": "C", "reason": "抽查"}
    )
    assert status == 200 and changed["credit_rating"] == "C"
    await _as(service, reviewer, "POST", path, {"credit_rating": "B", "reason": "整改"})
    clerk = await create_operator(service.database_url, ("clerk",))
    status, body = await _as(service, clerk, "POST", path, {"credit_rating": "A", "reason": "x"})
    assert status == 403 and body["error"]["code"] == "ROLE_NOT_ALLOWED"
    history = await _get(service, f"/v1/facilities/{code}/credit-ratings")
    assert [(h["from"], h["to"], h["reason"]) for h in history["items"]] == [
        ("C", "B", "整改"),
        ("A", "C", "抽查"),
    ]
    assert all(
        (h["actor"], h["operator_id"], h["operator_name"])
        == (f"operator:{reviewer.operator_id}", reviewer.operator_id, "审核员甲")
        for h in history["items"]
    )
    rated = await _get(service, f"/v1/facilities?q={tag}&credit_rating=B")
    assert [f["fixmedins_code"] for f in rated["items"]] == [code]
    status, body = await service.admin(
        "POST", f"/v1/facilities/{code}/credit-rating", {"credit_rating": "B"}
    )
    assert status == 400, body  # a reason, always
    status, body = await service.admin("PATCH", f"/v1/facilities/{code}", {"credit_rating": "A"})
    assert status == 400, body  # no longer through PATCH
    entries = await _get(
        service, f"/v1/audit/entries?object_type=facility&object_id={code}&sort=at"
    )
    assert [e["action"] for e in entries["items"]] == [
        "facility.created",
        "facility.credit_rating_changed",
        "facility.credit_rating_changed",
    ]
    assert entries["items"][1]["data"] == {
        "from": "A",
        "to": "C",
        "reason": "抽查",
        "operator_id": reviewer.operator_id,
        "operator_name": "审核员甲",
        "via_token_id": entries["items"][1]["data"]["via_token_id"],  # through an API token
    }


async def test_terminals_and_settlements_are_listed_by_facility(service: Service, catalog):
    code, p = await _patient_at(service)
    first = await p.settle("310", "11", lines(("A-AMOX", 1000, 1)))
    second = await p.settle("310", "11", lines(("A-AMOX", 3000, 1)))
    await p.terminal.call("POST", f"/v1/settlements/{first['setl_id']}/reverse")
    terminals = await _get(service, f"/v1/terminals?fixmedins_code={code}")
    assert [(t["kind"], t["status"]) for t in terminals["items"]] == [("pos", "active")]
    assert "terminal_key" not in terminals["items"][0]

    today = clock.business_date().isoformat()
    mine = await _get(
        service,
        f"/v1/settlements?fixmedins_code={code}&from={today}&to={today}&sort=medfee_sumamt",
    )
    assert [s["setl_id"] for s in mine["items"]] == [first["setl_id"], second["setl_id"]]
    settled = await _get(
        service, f"/v1/settlements?psn_no={p.psn_no}&status=settled&from={today}&to={today}"
    )
    assert [s["setl_id"] for s in settled["items"]] == [second["setl_id"]]
    assert settled["items"][0]["medfee_sumamt"] == second["medfee_sumamt"]


async def test_a_held_settlement_in_review_with_its_lines_person_masked_and_flags(
    service: Service, catalog
):
    code, p = await _patient_at(service, credit_rating="C")
    big = lines(("A-AMOX", 5_000_001, 1), ("B-CEF", 2500, 4), ("C-VIT", 3000, 1))
    held = await p.settle("310", "21", big)  # held (C-rated), and flagged LARGE_CLAIM
    queue = await _get(service, "/v1/reviews?status=pending&sort=-setl_time&page_size=200")
    assert held["setl_id"] in {r["setl_id"] for r in queue["items"]}
    detail = await _get(service, f"/v1/reviews/{held['setl_id']}")
    assert detail["review_status"] == "pending" and detail["facility"]["fixmedins_code"] == code
    assert detail["facility"]["credit_rating"] == "C"
    assert [(line["code"], line["name"]) for line in detail["lines"]] == [
        ("A-AMOX", "阿莫西林"),
        ("B-CEF", "头孢克肟"),
        ("C-VIT", "复合维生素"),
    ]
    assert detail["person"]["psn_name"] == "张*" and "*" in detail["person"]["certno"]
    assert p.person["certno_full"] not in msgspec.json.encode(detail).decode()
    assert detail["settlement"]["setldetail"] and detail["settlement"]["fund_pay_sumamt"] > 0
    assert {f["rule"] for f in detail["flags"]} >= {"LARGE_CLAIM"}

    decided = await service.admin_ok(
        "POST", f"/v1/reviews/{held['setl_id']}/approve", {"reason": "票据齐全"}
    )
    assert decided["review_status"] == "approved" and decided["note"] == "票据齐全"
    approved = await _get(service, "/v1/reviews?status=approved&sort=-setl_time")
    assert held["setl_id"] in {r["setl_id"] for r in approved["items"]}
    status, _, _ = await _raw(service, f"/v1/reviews/S20260101{'0' * 20}")
    assert status == 404


async def test_a_flag_is_handled_once_with_a_note_and_audited(service: Service, catalog):
    code, p = await _patient_at(service)
    big = await p.settle("310", "21", lines(("A-AMOX", 5_000_001, 1)))
    flags = await _get(
        service, f"/v1/supervision/flags?fixmedins_code={code}&rule=LARGE_CLAIM&handled=false"
    )
    (flag,) = flags["items"]
    assert flag["setl_id"] == big["setl_id"] and flag["handled"] is False
    reviewer = await create_operator(service.database_url, ("reviewer",), name="审核员乙")
    status, handled = await _as(
        service,
        reviewer,
        "POST",
        f"/v1/supervision/flags/{flag['flag_id']}/handle",
        {"note": "已核实"},
    )
    assert status == 200 and handled["handled"] is True and handled["handled_note"] == "已核实"
    assert (handled["handled_by"], handled["handled_by_name"]) == (reviewer.operator_id, "审核员乙")
    assert handled["handled_at"] is not None
    status, body = await service.admin(
        "POST", f"/v1/supervision/flags/{flag['flag_id']}/handle", {"note": "again"}
    )
    assert status == 409 and body["error"]["code"] == "FLAG_HANDLED"
    status, body = await service.admin(
        "POST", "/v1/supervision/flags/999999999/handle", {"note": "x"}
    )
    assert status == 404
    left = await _get(service, f"/v1/supervision/flags?fixmedins_code={code}&handled=false")
    assert flag["flag_id"] not in {f["flag_id"] for f in left["items"]}
    entries = await _get(
        service, f"/v1/audit/entries?action=flag.handled&object_id={big['setl_id']}"
    )
    assert [
        (e["actor"], e["data"]["note"], e["data"]["operator_name"]) for e in entries["items"]
    ] == [(f"operator:{reviewer.operator_id}", "已核实", "审核员乙")]


async def test_clearing_runs_are_listed_and_a_file_downloads_by_name(service: Service, catalog):
    code, p = await _patient_at(service)
    paid = await p.settle("310", "11", lines(("A-AMOX", 2000, 1)))
    await _shift(service, "settlements", "setl_date", "setl_id", [paid["setl_id"]], CLEARING_DAY)
    day = CLEARING_DAY.isoformat()
    await service.admin_ok("POST", "/v1/clearing/runs", {"clearing_date": day})
    runs = await _get(service, f"/v1/clearing/runs?from={day}&to={day}")
    (run,) = runs["items"]
    assert run["clearing_date"] == day and run["settlements_cleared"] >= 1
    assert run["facilities"] >= 1
    status, headers, raw = await _raw(service, f"/v1/clearing/runs/{day}/files/{code}")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert headers["Content-Disposition"] == f'attachment; filename="clearing-{day}-{code}.csv"'
    assert raw.endswith(b"\r\n") and not raw.startswith(b"\xef\xbb\xbf")  # CRLF, no BOM
    last = raw.decode().splitlines()[-1].split(",")
    assert (last[0], last[5]) == ("total", "TOTAL")
    assert paid["setl_id"] in raw.decode()


async def test_the_fund_report_breaks_down_per_fund_and_type_day_and_rule(
    service: Service, catalog
):
    _code, p = await _patient_at(service)
    await p.settle("310", "21", lines(("A-AMOX", 5_000_001, 1)))
    today = clock.business_date().isoformat()
    report = await _get(service, f"/v1/reports/funds?from={today}&to={today}")
    assert sum(d["amount"] for d in report["per_day"]) == report["expenditure_total"]
    assert [d["date"] for d in report["per_day"]] == [today]
    assert report["per_day"][0]["count"] == report["settlements"]
    assert (
        sum(b["amount"] for b in report["by_fund_and_facility_type"])
        == (report["expenditure_total"])
    )
    assert {b["facility_type"] for b in report["by_fund_and_facility_type"]} <= {
        "hospital",
        "pharmacy",
    }
    rules = {r["rule"]: r["count"] for r in report["flags_per_rule"]}
    assert rules["LARGE_CLAIM"] >= 1


async def test_the_public_report_is_a_frozen_snapshot_of_aggregates_only(service: Service, catalog):
    tag = unique_code("PUB")
    created = await service.facility(fixmedins_code=tag, fixmedins_name=f"{tag}公开医院")
    pos = await service.terminal("pos", created["fixmedins_code"])
    counter = await service.terminal("counter")
    p = await patient(service, pos, counter, balance=0)
    settled = await p.settle("310", "21", FEE)
    await _shift(service, "settlements", "setl_date", "setl_id", [settled["setl_id"]], REPORT_DAY)
    day = REPORT_DAY.isoformat()
    report = await service.admin_ok(
        "POST",
        "/v1/public-reports",
        {"period_from": day, "period_to": day, "title": "2022年5月18日基金收支"},
    )
    report_id = report["report_id"]
    figures = report["figures"]
    # Published by an operator, who is named in the chained entry.
    entries = await _get(
        service, f"/v1/audit/entries?action=public_report.published&object_id={report_id}"
    )
    [entry] = entries["items"]
    assert entry["data"]["operator_id"] == entry["actor"].removeprefix("operator:")
    assert entry["data"]["operator_name"]
    # The day's one settlement, at one hospital, would be that person's bill: withheld.
    assert figures["settlements"] is None and figures["expenditure_total"] is None
    assert [(d["count"], d["amount"]) for d in figures["per_day"]] == [(None, None)]
    assert {t["facility_type"] for t in figures["per_facility_type"]} == {"hospital"}
    assert all(t["amount"] is None for t in figures["per_facility_type"])

    # Open to anyone: the list, the snapshot, its CSV.
    status, _, raw = await _raw(service, "/public/reports?page_size=200", admin=False)
    assert status == 200
    assert report_id in {r["report_id"] for r in msgspec.json.decode(raw)["items"]}
    status, _, published = await _raw(service, f"/public/reports/{report_id}", admin=False)
    assert status == 200 and msgspec.json.decode(published)["figures"] == figures
    status, headers, csv_raw = await _raw(service, f"/public/reports/{report_id}.csv", admin=False)
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert headers["Content-Disposition"] == (f'attachment; filename="fund-report-{report_id}.csv"')
    rows = list(csv.DictReader(io.StringIO(csv_raw.decode())))
    assert {r["section"] for r in rows} >= {"income", "fund", "facility_type", "day"}

    # Aggregates only: nothing that names a person or a facility, in either form.
    secrets_ = [
        p.psn_no,
        p.person["certno"],
        p.person["certno_full"],
        p.person["psn_name"],
        tag,
        created["fixmedins_name"],
        settled["setl_id"],
        settled["card_no"],
        f'"amount":{settled["medfee_sumamt"]}',
        f",{settled['medfee_sumamt']}\n",
    ]
    for body in (published.decode(), csv_raw.decode()):
        for secret in secrets_:
            assert secret not in body, secret
        for word in ("psn_no", "certno", "psn_name", "fixmedins_code", "fixmedins_name", "mask"):
            assert word not in body, word

    # Frozen: a later reversal does not change what was published.
    await pos.call("POST", f"/v1/settlements/{settled['setl_id']}/reverse")
    status, _, again = await _raw(service, f"/public/reports/{report_id}", admin=False)
    assert again == published
    listed = await _get(service, "/v1/public-reports?page_size=200")
    assert report_id in {r["report_id"] for r in listed["items"]}
    status, _, _ = await _raw(service, "/public/reports/R0000000000", admin=False)
    assert status == 404
    status, body = await service.admin(
        "POST",
        "/v1/public-reports",
        {"period_from": day, "period_to": "2099-01-01", "title": "x"},
    )
    assert status == 422 and body["error"]["code"] == "PERIOD_NOT_OVER"


async def test_search_and_overview_do_not_rebuild_the_identity_number(service: Service):
    """The person search (by number, by psn_no) and the overview show what the person
    routes show, no more: the number stays one of thousands."""
    person = await service.person()
    certno, psn_no = person["certno_full"], person["psn_no"]
    counter = await service.terminal("counter")
    await issue_card(counter, psn_no)
    by_number = await _get(service, f"/v1/persons?q={certno}")
    by_psn_no = await _get(service, f"/v1/persons?q={psn_no}")
    overview = await _get(service, f"/v1/persons/{psn_no}/overview")
    answers = {
        "GET /v1/persons?q=<certno>": [by_number],
        "GET /v1/persons?q=<psn_no>": [by_psn_no],
        "GET /v1/persons/{psn_no}/overview": [overview],
    }
    answers["all of these together"] = [a for group in answers.values() for a in group]
    for where, group in answers.items():
        text = json.dumps(group, ensure_ascii=False)
        assert_not_rebuildable(certno, text, _visible(*group), where)


async def test_a_name_prefix_search_is_an_index_range(service: Service):
    """The search's own condition (``person_filter``) is answered by persons_name_prefix:
    with sequential scans priced out, the plan is that index's range."""
    where = person_filter("欧阳", DataProtector(b"\0" * 32))
    conn = await asyncpg.connect(service.database_url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = await conn.fetch(
                f"EXPLAIN SELECT psn_no FROM persons WHERE {where.sql}", *where.args
            )
    finally:
        await conn.close()
    text = "\n".join(r[0] for r in plan)
    assert "persons_name_prefix" in text, text


async def test_the_newest_settlements_page_is_read_off_an_index(service: Service):
    """The console's first view (every settlement, newest first) reads the end of
    settlements_time, not a sort of the whole table."""
    page = parse_page({}, SETTLEMENT_SORTS)
    where = settlement_filter(SettlementFilter())
    rows_sql, _ = page_sql(columns=SETTLEMENT_COLUMNS, source="settlements", where=where, page=page)
    conn = await asyncpg.connect(service.database_url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            await conn.execute("SET LOCAL enable_sort = off")
            plan = await conn.fetch(f"EXPLAIN {rows_sql}", *where.args, 50, 0)
    finally:
        await conn.close()
    text = "\n".join(r[0] for r in plan)
    assert "settlements_time" in text and "Seq Scan" not in text, text
