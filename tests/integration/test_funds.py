"""Reconciliation, clearing, review of C-rated facilities, supervision flags, the fund
report and the kiosk, through the HTTP API."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import msgspec
import pytest
import pytest_asyncio

from cardsvc import clock
from cardsvc.clearing.services import CLEARING_LOCK
from cardsvc.money import parse_yuan
from cardsvc.reconciliation.models import DETAIL_MAX_BODY, DETAIL_MAX_IDS
from tests.support.api import (
    POLICY_CATALOG,
    Service,
    authenticate_card,
    lines,
    patient,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]

FEE = lines(("A-AMOX", 100000, 3), ("B-CEF", 2500, 4), ("C-VIT", 3000, 1))  # POLICY E1


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def catalog(service: Service) -> None:
    await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})


async def _hospital(service: Service, **extra):
    facility = await service.facility(level="3", **extra)
    return facility["fixmedins_code"], await service.terminal("pos", facility["fixmedins_code"])


async def test_reconciliation_match_mismatch_and_detail(service: Service, catalog):
    _code, pos = await _hospital(service)
    counter = await service.terminal("counter")
    p = await patient(service, pos, counter, balance=50000)
    a = await p.settle("310", "21", FEE)
    b = await p.settle("310", "11", lines(("A-AMOX", 1000, 1)))
    c = await p.settle("310", "11", lines(("A-AMOX", 2000, 1)))
    await pos.call("POST", f"/v1/settlements/{c['setl_id']}/reverse")
    today = clock.business_date().isoformat()
    mine = {
        "insutype": "310",
        "stmt_begndate": today,
        "stmt_enddate": today,
        "fixmedins_setl_cnt": 2,
        "medfee_sumamt": a["medfee_sumamt"] + b["medfee_sumamt"],
        "fund_pay_sumamt": a["fund_pay_sumamt"] + b["fund_pay_sumamt"],
        "acct_pay": a["acct_pay"] + b["acct_pay"],
    }
    result = await pos.call("POST", "/v1/reconciliation", mine)
    assert result["stmt_rslt"] == "0" and result["service"] == result["facility"]
    off = await pos.call("POST", "/v1/reconciliation", {**mine, "fixmedins_setl_cnt": 3})
    assert off["stmt_rslt"] == "1" and off["service"]["fixmedins_setl_cnt"] == 2
    detail = await pos.call(
        "POST",
        "/v1/reconciliation/detail",
        {"stmt_date": today, "setl_ids": [a["setl_id"], c["setl_id"], "S-NOT-OURS"]},
    )
    assert detail == {
        "stmt_rslt": "1",
        "matched": 1,
        "missing_on_service": ["S-NOT-OURS"],
        "missing_on_facility": [b["setl_id"]],
        "reversed_on_service": [c["setl_id"]],
    }
    clean = await pos.call(
        "POST",
        "/v1/reconciliation/detail",
        {"stmt_date": today, "insutype": "310", "setl_ids": [a["setl_id"], b["setl_id"]]},
    )
    assert clean["stmt_rslt"] == "0" and clean["matched"] == 2


async def test_detail_takes_a_whole_busy_day_in_one_request(service: Service):
    """20,000 ids of the longest form do not fit the app-wide 256 KiB body limit; the detail
    route has its own, derived from its id limit. Past that limit: 413."""
    _, pos = await _hospital(service)
    today = clock.business_date().isoformat()
    ids = [f"S{today.replace('-', '')}{n:020x}".ljust(64, "0") for n in range(DETAIL_MAX_IDS)]
    body = {"stmt_date": today, "setl_ids": ids}
    assert len(msgspec.json.encode(body)) > 256 * 1024
    detail = await pos.call("POST", "/v1/reconciliation/detail", body)
    assert detail["stmt_rslt"] == "1" and len(detail["missing_on_service"]) == DETAIL_MAX_IDS
    too_many = await pos.request(
        "POST", "/v1/reconciliation/detail", {**body, "setl_ids": [*ids, "S1"]}
    )
    assert too_many.status == 400
    padded = {**body, "padding": "x" * DETAIL_MAX_BODY}
    too_big = await pos.request("POST", "/v1/reconciliation/detail", padded)
    assert too_big.status == 413 and too_big.body["error"]["code"] == "PAYLOAD_TOO_LARGE"


async def _shift(service: Service, table: str, column: str, ids: list[str], day: dt.date) -> None:
    key = "setl_id"
    conn = await asyncpg.connect(service.database_url)
    try:
        await conn.execute(
            f"UPDATE {table} SET {column} = $2 WHERE {key} = ANY($1::text[])", ids, day
        )
    finally:
        await conn.close()


async def test_a_clearing_run_longer_than_the_wait_goes_on_in_the_background(
    service: Service,
):
    """A run that cannot finish within CARDSVC_CLEARING_WAIT is answered 202 and finishes
    by itself; meanwhile the day reads as running, not as missing. The run is held back here
    by holding the lock that serialises runs, as a long run of another day would."""
    day = dt.date(2021, 3, 14)  # no settlement is this old: an empty run of its own
    path = f"/v1/clearing/runs/{day.isoformat()}"
    conn = await asyncpg.connect(service.database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", CLEARING_LOCK)
        status, body = await service.admin("POST", "/v1/clearing/runs", {"clearing_date": str(day)})
        assert status == 202 and body == {"clearing_date": str(day), "status": "running"}
        status, body = await service.admin("GET", path)
        assert status == 202 and body["status"] == "running"
        again, _ = await service.admin("POST", "/v1/clearing/runs", {"clearing_date": str(day)})
        assert again == 202
        await conn.execute("SELECT pg_advisory_unlock($1)", CLEARING_LOCK)
        for _ in range(100):
            status, body = await service.admin("GET", path)
            if status != 202:
                break
            await asyncio.sleep(0.05)
        assert status == 200 and body["clearing_date"] == str(day)
        assert body["settlements_cleared"] == 0
        runs = await conn.fetchval(
            "SELECT count(*) FROM clearing_runs WHERE clearing_date = $1", day
        )
        assert runs == 1
    finally:
        await conn.close()
    stored = await service.admin_ok("POST", "/v1/clearing/runs", {"clearing_date": str(day)})
    assert stored == body


async def test_clearing_pays_nets_reversals_and_is_idempotent(service: Service, catalog):
    """Settlements are moved back two days (as if settled then) so this test owns its
    clearing dates; every other test settles today."""
    code, pos = await _hospital(service)
    counter = await service.terminal("counter")
    p = await patient(service, pos, counter, balance=50000)
    e1 = await p.settle("310", "21", FEE)
    small = await p.settle("310", "11", lines(("A-AMOX", 10000, 1)))
    today = clock.business_date()
    d1, d2 = today - dt.timedelta(days=2), today - dt.timedelta(days=1)
    await _shift(service, "settlements", "setl_date", [e1["setl_id"], small["setl_id"]], d1)

    run = await service.admin_ok("POST", "/v1/clearing/runs", {"clearing_date": d1.isoformat()})
    mine = next(f for f in run["facilities"] if f["fixmedins_code"] == code)
    by_fund = {i["fund"]: i for i in mine["items"]}
    assert by_fund["310100"]["settled_amt"] == e1["hifp_pay"] + small["hifp_pay"]
    assert by_fund["acct"]["settled_amt"] == e1["acct_pay"] + small["acct_pay"]
    assert mine["net_amt"] == sum(s["fund_pay_sumamt"] + s["acct_pay"] for s in (e1, small))
    again = await service.admin_ok("POST", "/v1/clearing/runs", {"clearing_date": d1.isoformat()})
    assert again == run
    file1 = await _file(service, d1, code)
    rows = await _file_rows(service, d1, code)
    listed = [r["setl_id"] for r in rows if r["record"] == "settlement"]
    assert sorted(set(listed)) == sorted([e1["setl_id"], small["setl_id"]])
    assert set(listed) == await _cleared_ids(service, "settlements", d1, code)
    _assert_totals_are_the_run(rows, mine)
    assert rows[-1]["fund"] == "TOTAL" and _fen(rows[-1]["net_yuan"]) == mine["net_amt"]
    assert int(rows[-1]["settlements"]) == mine["settlements"] == 2

    reversal = await pos.call("POST", f"/v1/settlements/{e1['setl_id']}/reverse")
    await _shift(service, "reversals", "revs_date", [e1["setl_id"]], d2)
    run2 = await service.admin_ok("POST", "/v1/clearing/runs", {"clearing_date": d2.isoformat()})
    mine2 = next(f for f in run2["facilities"] if f["fixmedins_code"] == code)
    assert mine2["net_amt"] == -(reversal["fund_refund"] + reversal["acct_refund"])
    assert (await _file(service, d2, code)) == (await _file(service, d2, code))
    rows2 = await _file_rows(service, d2, code)
    taken_back = [r for r in rows2 if r["record"] == "reversal"]
    assert {r["setl_id"] for r in taken_back} == {e1["setl_id"]}
    assert {r["setl_id"] for r in taken_back} == await _cleared_ids(service, "reversals", d2, code)
    assert sum(_fen(r["net_yuan"]) for r in taken_back) == mine2["net_amt"] < 0
    _assert_totals_are_the_run(rows2, mine2)
    assert (await _file(service, d1, code)) == file1  # a later run leaves the first file be
    assert (
        await service.admin_ok("POST", "/v1/clearing/runs", {"clearing_date": d2.isoformat()})
        == run2
    )

    future = (today + dt.timedelta(days=1)).isoformat()
    status, body = await service.admin("POST", "/v1/clearing/runs", {"clearing_date": future})
    assert status == 422 and body["error"]["code"] == "CLEARING_DATE_NOT_CLOSED"
    assert (await service.admin_ok("GET", "/v1/ledger/proof"))["ok"]


async def test_a_file_that_no_longer_adds_up_to_its_run_is_cut_off_before_its_totals(
    service: Service, catalog
):
    """The file is read from the rows the run marked and checked against the run's stored
    figures: a row marked by hand afterwards makes the download fail, never a file whose
    totals disagree with what was paid. Runs that stored their file keep serving it."""
    code, pos = await _hospital(service)
    counter = await service.terminal("counter")
    p = await patient(service, pos, counter, balance=50000)
    cleared = await p.settle("310", "11", lines(("A-AMOX", 1000, 1)))
    later = await p.settle("310", "11", lines(("A-AMOX", 2000, 1)))
    day = dt.date(2021, 3, 9)
    await _shift(service, "settlements", "setl_date", [cleared["setl_id"]], day)
    await service.admin_ok("POST", "/v1/clearing/runs", {"clearing_date": day.isoformat()})
    good = await _file(service, day, code)
    assert cleared["setl_id"] in good and later["setl_id"] not in good

    await _shift(service, "settlements", "clearing_date", [later["setl_id"]], day)
    headers = {"Authorization": f"Bearer {service.admin_token}"}
    url = f"{service.base_url}/v1/clearing/runs/{day.isoformat()}/files/{code}"
    try:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with service.http.get(url, headers=headers) as resp:
                assert resp.status == 200
                await resp.read()
    finally:
        conn = await asyncpg.connect(service.database_url)
        try:
            await conn.execute(
                "UPDATE settlements SET clearing_date = NULL WHERE setl_id = $1", later["setl_id"]
            )
            await conn.execute(
                "INSERT INTO clearing_files (clearing_date, fixmedins_code, content)"
                " VALUES ($1, $2, $3)",
                day,
                code,
                "stored by an earlier version\n",
            )
        finally:
            await conn.close()
    assert await _file(service, day, code) == "stored by an earlier version\n"


async def _file(service: Service, day: dt.date, code: str) -> str:
    headers = {"Authorization": f"Bearer {service.admin_token}"}
    url = f"{service.base_url}/v1/clearing/runs/{day.isoformat()}/files/{code}"
    async with service.http.get(url, headers=headers) as resp:
        assert resp.status == 200 and resp.content_type == "text/csv" and resp.charset == "utf-8"
        assert resp.headers["Content-Disposition"] == (
            f'attachment; filename="clearing-{day.isoformat()}-{code}.csv"'
        )
        return (await resp.read()).decode("ascii")  # no BOM, nothing beyond ASCII


async def _file_rows(service: Service, day: dt.date, code: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(await _file(service, day, code), newline="")))


def _fen(figure: str) -> int:
    """A file's yuan figure back to fen, exactly."""
    sign = -1 if figure.startswith("-") else 1
    return sign * parse_yuan(figure.removeprefix("-"))


async def _cleared_ids(service: Service, table: str, day: dt.date, code: str) -> set[str]:
    conn = await asyncpg.connect(service.database_url)
    try:
        rows = await conn.fetch(
            f"SELECT setl_id FROM {table} WHERE clearing_date = $1 AND fixmedins_code = $2",
            day,
            code,
        )
    finally:
        await conn.close()
    return {r["setl_id"] for r in rows}


def _assert_totals_are_the_run(rows: list[dict[str, str]], facility: dict) -> None:
    """Each fund's total line is the sum of its lines and the run's item, to the fen."""
    totals = {r["fund"]: r for r in rows if r["record"] == "total"}
    assert list(totals) == [i["fund"] for i in facility["items"]] + ["TOTAL"]
    for item in facility["items"]:
        mine = [r for r in rows if r["record"] != "total" and r["fund"] == item["fund"]]
        for column, amount in (
            ("settled_yuan", "settled_amt"),
            ("reversed_yuan", "reversed_amt"),
            ("net_yuan", "net_amt"),
        ):
            assert _fen(totals[item["fund"]][column]) == item[amount]
            assert sum(_fen(r[column]) for r in mine) == item[amount]
    assert _fen(totals["TOTAL"]["net_yuan"]) == facility["net_amt"]


async def test_c_rated_settlements_are_held_for_review(service: Service, catalog):
    _code, pos = await _hospital(service, credit_rating="C")
    counter = await service.terminal("counter")
    p = await patient(service, pos, counter, balance=50000)
    held = await p.settle("310", "21", FEE)
    assert held["review_required"] is True
    rejected = await p.settle("310", "11", lines(("A-AMOX", 1000, 1)))
    queue = await service.admin_ok("GET", "/v1/reviews?page_size=200&sort=-setl_time")
    assert {held["setl_id"], rejected["setl_id"]} <= {r["setl_id"] for r in queue["items"]}

    ok = await service.admin_ok("POST", f"/v1/reviews/{held['setl_id']}/approve", {"note": "ok"})
    assert ok["review_status"] == "approved" and ok["note"] == "ok"
    assert (await service.admin_ok("POST", f"/v1/reviews/{held['setl_id']}/approve")) == ok
    status, body = await service.admin("POST", f"/v1/reviews/{held['setl_id']}/reject")
    assert status == 409 and body["error"]["code"] == "REVIEW_STATE"

    balance = (await service.admin_ok("GET", f"/v1/persons/{p.psn_no}"))["balc"]
    no = await service.admin_ok("POST", f"/v1/reviews/{rejected['setl_id']}/reject", {"note": "x"})
    assert no["review_status"] == "rejected" and no["settlement"]["status"] == "reversed"
    after = (await service.admin_ok("GET", f"/v1/persons/{p.psn_no}"))["balc"]
    assert after == balance + rejected["acct_pay"]

    # Reversed by the facility while held: withdrawn from the queue, nothing to decide.
    withdrawn = await p.settle("310", "11", lines(("A-AMOX", 500, 1)))
    await pos.call("POST", f"/v1/settlements/{withdrawn['setl_id']}/reverse")
    queue = await service.admin_ok("GET", "/v1/reviews?page_size=200&sort=-setl_time")
    assert withdrawn["setl_id"] not in {r["setl_id"] for r in queue["items"]}
    status, body = await service.admin("POST", f"/v1/reviews/{withdrawn['setl_id']}/approve")
    assert status == 409 and body["error"]["details"] == {"review_status": "withdrawn"}


async def test_supervision_flags(service: Service, catalog):
    pharmacy = await service.facility(type="pharmacy", level=None, agreements=["310"])
    ph_pos = await service.terminal("pos", pharmacy["fixmedins_code"])
    counter = await service.terminal("counter")
    p = await patient(service, ph_pos, counter, balance=100000)
    for _ in range(4):
        last = await p.settle("310", "41", lines(("A-AMOX", 100, 1)))
    _code, pos = await _hospital(service)
    auth = await authenticate_card(pos, p.card, "transaction")
    p.terminal, p.token = pos, auth["card_token"]
    big = await p.settle("310", "21", lines(("A-AMOX", 5_000_001, 1)))
    flags = await service.admin_ok("GET", "/v1/supervision/flags?page_size=200")
    mine = {(f["rule"], f["setl_id"]) for f in flags["items"] if f["psn_no"] == p.psn_no}
    assert ("PHARMACY_FREQUENCY", last["setl_id"]) in mine
    assert ("LARGE_CLAIM", big["setl_id"]) in mine
    assert ("CARD_AT_TWO_FACILITIES", big["setl_id"]) in mine
    only = await service.admin_ok("GET", "/v1/supervision/flags?rule=LARGE_CLAIM&page_size=200")
    assert {f["rule"] for f in only["items"]} == {"LARGE_CLAIM"}


async def test_fund_report(service: Service, catalog):
    today = clock.business_date().isoformat()
    report = await service.admin_ok("GET", f"/v1/reports/funds?from={today}&to={today}")
    assert report["settlements"] > 0 and report["account_credit_amount"] > 0
    assert report["expenditure_total"] == sum(line["amount"] for line in report["expenditure"])
    assert {line["fixmedins_type"] for line in report["expenditure"]} <= {"hospital", "pharmacy"}
    headers = {"Authorization": f"Bearer {service.admin_token}"}
    url = f"{service.base_url}/v1/reports/funds?from={today}&to={today}&format=csv"
    async with service.http.get(url, headers=headers) as resp:
        text = await resp.text()
    assert text.splitlines()[0] == "section,fund,fixmedins_type,count,amount"
    status, body = await service.admin("GET", f"/v1/reports/funds?from={today}&to=2000-01-01")
    assert status == 400 and body["error"]["code"] == "INVALID_DATES"


async def test_kiosk_balance_history_and_loss(service: Service, catalog):
    _code, pos = await _hospital(service)
    counter = await service.terminal("counter")
    kiosk = await service.terminal("kiosk")
    p = await patient(service, pos, counter, balance=7000)
    done = await p.settle("310", "11", lines(("A-AMOX", 1000, 1)))
    auth = await authenticate_card(kiosk, p.card, "identify")
    summary = await kiosk.call("POST", "/v1/kiosk/summary", {"card_token": auth["card_token"]})
    assert summary["balc"] == 6000 and summary["card_status"] == "active"
    assert [s["setl_id"] for s in summary["settlements"]] == [done["setl_id"]]
    lost = await kiosk.call("POST", "/v1/kiosk/report-loss", {"card_token": auth["card_token"]})
    assert lost == {"card_no": p.card.card_no, "card_status": "loss_reported"}
    refused = await pos.request("POST", "/v1/kiosk/summary", {"card_token": auth["card_token"]})
    assert refused.status == 403


async def test_clearing_command_writes_the_stored_files(service: Service, catalog, tmp_path):
    day = clock.business_date() - dt.timedelta(days=2)
    await service.admin_ok("POST", "/v1/clearing/runs", {"clearing_date": day.isoformat()})
    env = {
        "DATABASE_URL": service.database_url,
        "CARDSVC_ADMIN_TOKEN": "x" * 16,
        "CARDSVC_DATA_KEY": "00" * 32,
        "PATH": "/usr/bin:/bin",
    }
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "cardsvc",
            "clearing",
            "--date",
            day.isoformat(),
            "--out",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert cli.returncode == 0, cli.stderr
    folder = tmp_path / day.isoformat()
    summary = msgspec.json.decode((folder / "summary.json").read_bytes())
    for facility in summary["facilities"]:
        written = (folder / f"{facility['fixmedins_code']}.csv").read_bytes().decode()
        assert written == await _file(service, day, facility["fixmedins_code"])


async def test_ledger_proof_names_a_tampered_entry(service: Service, catalog):
    _code, pos = await _hospital(service)
    counter = await service.terminal("counter")
    p = await patient(service, pos, counter, balance=5000)
    result = await p.settle("310", "11", lines(("A-AMOX", 3000, 1)))
    conn = await asyncpg.connect(service.database_url)
    try:
        entry = await conn.fetchrow(
            "SELECT e.txn_id, e.line, e.amount FROM ledger_entries e JOIN ledger_txns t"
            " USING (txn_id) WHERE t.kind = 'settlement' AND t.ref = $1 AND e.side = 'C'",
            result["setl_id"],
        )
        await conn.execute(
            "UPDATE ledger_entries SET amount = amount + 1 WHERE txn_id = $1 AND line = $2",
            entry["txn_id"],
            entry["line"],
        )
        try:
            proof = await service.admin_ok("GET", "/v1/ledger/proof")
            assert proof["ok"] is False
            assert entry["txn_id"] in proof["unbalanced"]
            assert result["setl_id"] in proof["unbooked_settlements"]
        finally:
            await conn.execute(
                "UPDATE ledger_entries SET amount = $3 WHERE txn_id = $1 AND line = $2",
                entry["txn_id"],
                entry["line"],
                entry["amount"],
            )
        await conn.execute(
            "UPDATE psn_accounts SET balance = balance + 7 WHERE psn_no = $1", p.psn_no
        )
        try:
            proof = await service.admin_ok("GET", "/v1/ledger/proof")
            assert proof["balance_mismatches"] == [
                {"account": f"person:{p.psn_no}", "stored": 2007, "derived": 2000}
            ]
        finally:
            await conn.execute(
                "UPDATE psn_accounts SET balance = balance - 7 WHERE psn_no = $1", p.psn_no
            )
    finally:
        await conn.close()
    assert (await service.admin_ok("GET", "/v1/ledger/proof"))["ok"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/reports/funds?format=xml",
        "/v1/reports/funds?from=2025-W01-1",
        "/v1/clearing/runs/20250101",
        "/v1/clearing/runs/2025-02-30",
        "/v1/reports/funds?from=2026-01-01&to=2025-01-01&format=xml",
    ],
)
async def test_malformed_queries_are_400(service: Service, path: str):
    """(Paged lists answer 422 QUERY_INVALID: tests/integration/test_operator_lists.py.)"""
    status, body = await service.admin("GET", path)
    assert status == 400, body
    assert body["error"]["code"] in {"INVALID_QUERY", "INVALID_PATH_PARAMETER"}
    assert body["error"]["details"]["parameter"]


async def test_clearing_of_today_is_refused_until_the_day_is_over(service: Service, catalog):
    """Today (Asia/Shanghai) still takes settlements: a run of it would be stored for good
    and pay none of those that come after it. Refused by the API and the command alike,
    and nothing is stored."""
    _code, pos = await _hospital(service)
    counter = await service.terminal("counter")
    p = await patient(service, pos, counter, balance=5000)
    settled = await p.settle("310", "11", lines(("A-AMOX", 1000, 1)))
    today = clock.business_date()
    status, body = await service.admin(
        "POST", "/v1/clearing/runs", {"clearing_date": today.isoformat()}
    )
    assert status == 422 and body["error"]["code"] == "CLEARING_DATE_NOT_CLOSED"
    assert body["error"]["details"]["business_date"] == today.isoformat()
    # Today is Shanghai's date, not UTC's: from 16:00 to 24:00 UTC Shanghai is a day ahead,
    # and the date UTC calls tomorrow is already Shanghai's today (checked only when the
    # test runs in those hours: the clock is real). Later dates are refused too.
    shanghai_today = dt.datetime.now(dt.UTC).astimezone(ZoneInfo("Asia/Shanghai")).date()
    assert today == shanghai_today
    utc_tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    for later in sorted({utc_tomorrow, today + dt.timedelta(days=1), dt.date(2999, 12, 31)}):
        status, body = await service.admin(
            "POST", "/v1/clearing/runs", {"clearing_date": later.isoformat()}
        )
        assert status == 422 and body["error"]["code"] == "CLEARING_DATE_NOT_CLOSED", later
        assert body["error"]["details"]["clearing_date"] == later.isoformat()

    env = {
        "DATABASE_URL": service.database_url,
        "CARDSVC_ADMIN_TOKEN": "x" * 16,
        "CARDSVC_DATA_KEY": "00" * 32,
        "PATH": "/usr/bin:/bin",
    }
    cli = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "cardsvc", "clearing", "--date", today.isoformat()),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(cli.communicate(), timeout=60)
    assert cli.returncode == 1 and out == b""
    assert err.decode().splitlines()[-1].startswith("clearing: CLEARING_DATE_NOT_CLOSED: ")
    assert b"Traceback" not in err

    conn = await asyncpg.connect(service.database_url)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM clearing_runs WHERE clearing_date >= $1", today
        )
        cleared = await conn.fetchval(
            "SELECT clearing_date FROM settlements WHERE setl_id = $1", settled["setl_id"]
        )
    finally:
        await conn.close()
    assert stored == 0 and cleared is None
