"""Issue #11 items 4 and 8, through the HTTP API on real PostgreSQL and hsm_stub: amounts
bounded by the policy file, aggregates that one impossible row cannot poison, the
administrator's reversal, and an Idempotency-Key that is the person's as well as the body's."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from cardsvc import clock
from cardsvc.ledger import services as ledger
from cardsvc.ledger.postings import Posting, facility_account, fund_account, reversed_postings
from cardsvc.settlement import fundparts, params
from cardsvc.settlement.params import CURRENT_POLICY_VERSION, load_params
from cardsvc.terminal_sdk.client import TerminalClient
from tests.support.api import (
    POLICY_CATALOG,
    Patient,
    Service,
    authenticate_card,
    lines,
    patient,
    unique_code,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

PARAMS = load_params(CURRENT_POLICY_VERSION)


@dataclass
class World:
    service: Service
    counter: TerminalClient
    hospital: TerminalClient
    hospital_code: str

    async def patient(self, **kwargs) -> Patient:
        return await patient(self.service, self.hospital, self.counter, **kwargs)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(service: Service) -> World:
    await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})
    facility = await service.facility(level="3")
    code = facility["fixmedins_code"]
    return World(
        service, await service.terminal("counter"), await service.terminal("pos", code), code
    )


# --- item 8: the idempotency check is the person's too ----------------------------------


async def test_the_same_key_and_body_with_another_persons_card_is_a_conflict(world: World):
    first, second = await world.patient(balance=100000), await world.patient(balance=100000)
    key = unique_code("IK-")
    body = {
        "card_token": first.token,
        "insutype": "310",
        "med_type": "11",
        "mdtrt_id": "MD-SAME",
        "feedetail": lines(("A-AMOX", 5000, 1)),
    }
    headers = {"Idempotency-Key": key}
    settled = await world.hospital.request("POST", "/v1/settlements", body, headers)
    assert settled.status == 200 and settled.body["psn_no"] == first.psn_no

    other = await world.hospital.request(
        "POST", "/v1/settlements", {**body, "card_token": second.token}, headers
    )
    assert other.status == 409, other.body
    assert other.body["error"]["code"] == "IDEMPOTENCY_MISMATCH"
    untouched = await world.service.admin_ok("GET", f"/v1/persons/{second.psn_no}")
    assert untouched["balc"] == 100000

    # The first person's card authenticated again: the retry still finds its settlement.
    fresh = await authenticate_card(world.hospital, first.card, "transaction")
    retry = await world.hospital.request(
        "POST", "/v1/settlements", {**body, "card_token": fresh["card_token"]}, headers
    )
    assert retry.status == 200 and retry.body == settled.body


# --- item 4: amounts bounded by the policy file ------------------------------------------


async def test_amounts_above_the_policy_limits_are_refused_in_preview_and_settle(world: World):
    p = await world.patient(balance=100000)
    limits = PARAMS.amount_limits
    too_big = {
        "unit_price": lines(("A-AMOX", limits.unit_price + 1, 1)),
        "quantity": lines(("A-AMOX", 1, limits.quantity + 1)),
        "line_total": lines(("A-AMOX", limits.line_total // 2 + 1, 2)),
        "settlement_total": lines(
            *[("A-AMOX", limits.line_total, 1)] * (limits.settlement_total // limits.line_total),
            ("A-AMOX", limits.settlement_total % limits.line_total + 1, 1),
        ),
        # The work-injury lines of ~5 x 10^17 fen, accepted before.
        "issue": lines(("W-SUT", 10_000_000_000, 1), ("W-SUT", 1, 50_000)),
    }
    for name, fee in too_big.items():
        for path in ("/v1/settlements/preview", "/v1/settlements"):
            resp = await p.request(path, "310", "21", fee)
            assert resp.status == 422, (name, path, resp.body)
            error = resp.body["error"]
            assert error["code"] == "AMOUNT_LIMIT_EXCEEDED", (name, error)
            assert "limit" in error["message"] and error["details"]["limit"], error
    assert (
        "¥5,000,000.00"
        in (await p.request("/v1/settlements", "310", "21", too_big["settlement_total"])).body[
            "error"
        ]["message"]
    )
    person = await world.service.admin_ok("GET", f"/v1/persons/{p.psn_no}")
    assert person["balc"] == 100000  # nothing was settled
    at_limit = await p.settle(
        "310",
        "21",
        lines(
            *[("A-AMOX", limits.line_total, 1)] * (limits.settlement_total // limits.line_total),
            ("A-AMOX", limits.settlement_total % limits.line_total, 1),
        ),
    )
    assert at_limit["medfee_sumamt"] == limits.settlement_total


async def test_a_claim_above_the_policy_threshold_is_flagged(world: World):
    threshold = PARAMS.supervision.large_claim_fen
    p = await world.patient()
    at = await p.settle("310", "21", lines(("A-AMOX", threshold, 1)))
    above = await p.settle("310", "21", lines(("A-AMOX", threshold + 1, 1)))
    flags = await world.service.admin_ok(
        "GET",
        f"/v1/supervision/flags?rule=LARGE_CLAIM&fixmedins_code={world.hospital_code}&page_size=200",
    )
    mine = {f["setl_id"]: f["details"] for f in flags["items"] if f["psn_no"] == p.psn_no}
    assert at["setl_id"] not in mine
    assert mine[above["setl_id"]] == {"medfee_sumamt": threshold + 1, "threshold_fen": threshold}


# --- item 4: one facility's impossible rows stop nobody else ------------------------------

POISON_DAY = dt.date(2023, 6, 1)  # this test's own clearing date: nothing else is this old
POISON = 500_000_000_000_000_000  # ~5 x 10^17 fen: what 500 lines at the old wire maximum made
POISON_ROWS = 19  # their sum, 9.5 x 10^18, no longer fits a bigint


async def _store_as_before_the_limits(
    conn: asyncpg.Connection, fixmedins_code: str, psn_no: str, card_no: str
) -> list[str]:
    """Work-injury settlements as the service stored them before the limits existed: the
    settlement, and its ledger transaction (the fund pays it all to the facility)."""
    setl_time = dt.datetime.combine(POISON_DAY, dt.time(12), clock.BUSINESS_TZ)
    ids = []
    for n in range(POISON_ROWS):
        setl_id = f"S{POISON_DAY:%Y%m%d}{n:010x}{secrets.token_hex(5)}"
        await conn.execute(
            """
            INSERT INTO settlements (setl_id, psn_no, card_no, fixmedins_code, fixmedins_type,
                terminal_id, idempotency_key, request_hash, insutype, med_type, mdtrt_id,
                acct_used_flag, policy_version, setl_time, setl_date, medfee_sumamt,
                fulamt_ownpay_amt, overlmt_selfpay, preselfpay_amt, inscp_scp_amt, act_pay_dedc,
                hifp_pay, pool_prop_selfpay, acct_pay, fund_pay_sumamt, psn_part_amt,
                psn_cash_pay, balc, setldetail, year_delta)
            VALUES ($1, $2, $3, $4, 'hospital', 'T00000000', $5, '\\x00', '410', '21', 'MD',
                false, '2026.1', $6, $7, $8, 0, 0, 0, $8, 0, 0, 0, 0, $8, 0, 0, 0, $9, '{}')
            """,
            setl_id,
            psn_no,
            card_no,
            fixmedins_code,
            unique_code("IK-"),
            setl_time,
            POISON_DAY,
            POISON,
            msgspec.json.encode([{"fund_pay_type": "410100", "fund_payamt": POISON}]).decode(),
        )
        await ledger.post(
            conn,
            "settlement",
            setl_id,
            [
                Posting(fund_account("410100"), "D", POISON),
                Posting(facility_account(fixmedins_code), "C", POISON),
            ],
        )
        ids.append(setl_id)
    return ids


async def test_rows_stored_before_the_limits_stop_no_other_facility(world: World):
    service = world.service
    poisoner = await service.facility(level="2")
    bad = poisoner["fixmedins_code"]
    victim = await world.patient(balance=50000)
    good = await victim.settle("310", "21", lines(("A-AMOX", 100000, 3)))
    conn = await asyncpg.connect(service.database_url)
    try:
        await conn.execute(
            "UPDATE settlements SET setl_date = $2 WHERE setl_id = $1", good["setl_id"], POISON_DAY
        )
        poisoned = await _store_as_before_the_limits(conn, bad, victim.psn_no, victim.card.card_no)
    finally:
        await conn.close()
    day = POISON_DAY.isoformat()

    # Clearing: the other facility is paid; the poisoner's rows are held and named.
    run = await service.admin_ok("POST", "/v1/clearing/runs", {"clearing_date": day})
    paid = next(f for f in run["facilities"] if f["fixmedins_code"] == world.hospital_code)
    assert paid["net_amt"] == good["fund_pay_sumamt"] + good["acct_pay"]
    assert bad not in {f["fixmedins_code"] for f in run["facilities"]}
    (hold,) = [h for h in run["held"] if h["fixmedins_code"] == bad]
    assert hold["code"] == "AMOUNT_LIMIT_EXCEEDED" and hold["settlements"] == POISON_ROWS
    assert hold["setl_ids"] == sorted(poisoned) and "¥5,000,000.00" in hold["message"]

    # The fund report leaves them out and counts them.
    report = await service.admin_ok("GET", f"/v1/reports/funds?from={day}&to={day}")
    assert report["out_of_limits"] == POISON_ROWS
    assert report["out_of_limits_setl_ids"] == sorted(poisoned)
    assert report["expenditure_total"] == good["fund_pay_sumamt"] + good["acct_pay"]
    assert report["medfee_sumamt"] == good["medfee_sumamt"]

    # Reconciliation: the other facility's is untouched; the poisoner's answers, naming them.
    figures = {"stmt_begndate": day, "stmt_enddate": day}
    mine = await world.hospital.call(
        "POST",
        "/v1/reconciliation",
        {
            "insutype": "310",
            **figures,
            "fixmedins_setl_cnt": 1,
            "medfee_sumamt": good["medfee_sumamt"],
            "fund_pay_sumamt": good["fund_pay_sumamt"],
            "acct_pay": good["acct_pay"],
        },
    )
    assert mine["stmt_rslt"] == "0" and mine["out_of_limits"] == []
    bad_pos = await service.terminal("pos", bad)
    theirs = await bad_pos.call(
        "POST",
        "/v1/reconciliation",
        {
            "insutype": "410",
            **figures,
            "fixmedins_setl_cnt": POISON_ROWS,
            "medfee_sumamt": 0,
            "fund_pay_sumamt": 0,
            "acct_pay": 0,
        },
    )
    assert theirs["stmt_rslt"] == "1" and theirs["out_of_limits"] == sorted(poisoned)
    assert theirs["service"]["fixmedins_setl_cnt"] == 0
    assert (await service.admin_ok("GET", "/v1/ledger/proof"))["ok"]

    # The administrator reverses them (the facility need not): the next run holds nothing.
    for setl_id in poisoned:
        reversal = await service.admin_ok(
            "POST", f"/v1/settlements/{setl_id}/admin-reversal", {"reason": "amount impossible"}
        )
        assert reversal["fund_refund"] == POISON
    later = await service.admin_ok(
        "POST",
        "/v1/clearing/runs",
        {"clearing_date": (POISON_DAY + dt.timedelta(days=1)).isoformat()},
    )
    assert bad not in {h["fixmedins_code"] for h in later["held"]}
    assert bad not in {f["fixmedins_code"] for f in later["facilities"]}
    assert (await service.admin_ok("GET", "/v1/ledger/proof"))["ok"]


# --- item 4: the administrator's reversal ------------------------------------------------


async def test_the_administrator_reverses_in_full_once_with_a_reason(world: World):
    service = world.service
    p = await world.patient(balance=50000)
    fee = lines(("A-AMOX", 100000, 3), ("B-CEF", 2500, 4), ("C-VIT", 3000, 1))  # POLICY E1
    first = await p.settle("310", "21", fee)
    setl_id = first["setl_id"]
    path = f"/v1/settlements/{setl_id}/admin-reversal"

    # Not for terminals, not without a reason, not for an unknown settlement.
    by_terminal = await world.hospital.request("POST", path, {"reason": "mine"})
    assert (
        by_terminal.status == 401
        and by_terminal.body["error"]["code"] == "OPERATOR_CREDENTIALS_MISSING"
    )
    for body in (None, {}, {"reason": ""}, {"reason": "x" * 201}, {"reason": "a\nb"}):
        status, error = await service.admin("POST", path, body)
        assert status == 400, (body, status, error)
    unknown = f"/v1/settlements/S{clock.business_date():%Y%m%d}{'0' * 20}/admin-reversal"
    status, error = await service.admin("POST", unknown, {"reason": "x"})
    assert status == 404 and error["error"]["code"] == "SETTLEMENT_NOT_FOUND"
    assert (await service.admin_ok("GET", f"/v1/settlements/{setl_id}"))["status"] == "settled"

    reason = "facility closed; reversed on the fund office's decision"
    reversal = await service.admin_ok("POST", path, {"reason": reason})
    assert reversal["acct_refund"] == 50000 and reversal["fund_refund"] == first["fund_pay_sumamt"]
    assert reversal["balc"] == 50000 and reversal["reason"] == reason
    assert await service.admin_ok("POST", path, {"reason": "again"}) == reversal
    assert await p.terminal.call("POST", f"/v1/settlements/{setl_id}/reverse") == reversal
    assert (await service.admin_ok("GET", f"/v1/settlements/{setl_id}"))["status"] == "reversed"
    # The year state is given back too: a first admission again (full deductible).
    redo = await p.settle("310", "21", fee)
    assert redo["act_pay_dedc"] == first["act_pay_dedc"] == 80000

    conn = await asyncpg.connect(service.database_url)
    try:
        audited = await conn.fetch(
            "SELECT actor, data FROM audit_log WHERE object_type = 'settlement'"
            " AND object_id = $1 AND action = 'settlement.reversed'",
            setl_id,
        )
    finally:
        await conn.close()
    # The operator who reversed it, by id in the actor and by name in the chained data.
    assert len(audited) == 1 and audited[0]["actor"].startswith("operator:OP")
    data = msgspec.json.decode(audited[0]["data"])
    assert data["reason"] == reason and data["operator_name"]
    assert audited[0]["actor"] == f"operator:{data['operator_id']}"
    assert (await service.admin_ok("GET", "/v1/ledger/proof"))["ok"]


async def test_a_facility_whose_sums_do_not_fit_is_held_alone(world: World):
    """Settlements cleared before the limits existed, each of 5 x 10^18 fen, reversed since:
    taking both back in one run needs 10^19, more than any bigint. That facility's share
    (its reversals and its ordinary settlement alike) waits; the others clear."""
    service = world.service
    day = dt.date(2023, 7, 1)
    huge = 5 * 10**18
    facility = (await service.facility(level="2"))["fixmedins_code"]
    pos = await service.terminal("pos", facility)
    p = await patient(service, pos, world.counter)
    own = await p.settle("310", "11", lines(("A-AMOX", 1000, 1)))
    other = await world.patient()
    paid = await other.settle("310", "11", lines(("A-AMOX", 2000, 1)))
    conn = await asyncpg.connect(service.database_url)
    try:
        await conn.execute(
            "UPDATE settlements SET setl_date = $2 WHERE setl_id = ANY($1::text[])",
            [own["setl_id"], paid["setl_id"]],
            day,
        )
        cleared = dt.date(2023, 6, 15)
        huge_ids = []
        for n in range(2):
            setl_id = f"S{cleared:%Y%m%d}{n:010x}{secrets.token_hex(5)}"
            await conn.execute(
                """
                INSERT INTO settlements (setl_id, psn_no, card_no, fixmedins_code,
                    fixmedins_type, terminal_id, idempotency_key, request_hash, insutype,
                    med_type, mdtrt_id, acct_used_flag, policy_version, setl_time, setl_date,
                    medfee_sumamt, fulamt_ownpay_amt, overlmt_selfpay, preselfpay_amt,
                    inscp_scp_amt, act_pay_dedc, hifp_pay, pool_prop_selfpay, acct_pay,
                    fund_pay_sumamt, psn_part_amt, psn_cash_pay, balc, setldetail, year_delta,
                    status, clearing_date)
                VALUES ($1, $2, $3, $4, 'hospital', 'T00000000', $5, '\\x00', '410', '21', 'MD',
                    false, '2026.1', $6, $7, $8, 0, 0, 0, $8, 0, 0, 0, 0, $8, 0, 0, 0, $9, '{}',
                    'reversed', $7)
                """,
                setl_id,
                p.psn_no,
                p.card.card_no,
                facility,
                unique_code("IK-"),
                dt.datetime.combine(cleared, dt.time(12), clock.BUSINESS_TZ),
                cleared,
                huge,
                msgspec.json.encode([{"fund_pay_type": "410100", "fund_payamt": huge}]).decode(),
            )
            booked = [
                Posting(fund_account("410100"), "D", huge),
                Posting(facility_account(facility), "C", huge),
            ]
            await ledger.post(conn, "settlement", setl_id, booked)
            await ledger.post(conn, "reversal", setl_id, reversed_postings(booked))
            await conn.execute(
                "INSERT INTO reversals (reversal_id, setl_id, psn_no, fixmedins_code, actor,"
                " reason, revs_time, revs_date, acct_refund, fund_refund, balc)"
                " VALUES ($1, $2, $3, $4, 'admin', 'test', $5, $6, 0, $7, 0)",
                "R" + setl_id[1:],
                setl_id,
                p.psn_no,
                facility,
                dt.datetime.combine(day, dt.time(12), clock.BUSINESS_TZ),
                day,
                huge,
            )
            huge_ids.append(setl_id)

        run = await service.admin_ok("POST", "/v1/clearing/runs", {"clearing_date": str(day)})
        (hold,) = [h for h in run["held"] if h["fixmedins_code"] == facility]
        assert hold["code"] == "AMOUNT_OUT_OF_RANGE", hold
        assert facility not in {f["fixmedins_code"] for f in run["facilities"]}
        others = {f["fixmedins_code"]: f for f in run["facilities"]}
        assert others[world.hospital_code]["net_amt"] >= paid["fund_pay_sumamt"] + paid["acct_pay"]
        waiting = await conn.fetch(
            "SELECT clearing_date FROM settlements WHERE setl_id = $1"
            " UNION ALL SELECT clearing_date FROM reversals WHERE setl_id = ANY($2::text[])",
            own["setl_id"],
            huge_ids,
        )
        assert [r["clearing_date"] for r in waiting] == [None, None, None]
        assert (await service.admin_ok("GET", "/v1/ledger/proof"))["ok"]
    finally:
        # Settled by hand, so later runs (of other tests) do not meet them again.
        await conn.execute(
            "UPDATE reversals SET clearing_date = '2000-01-01' WHERE fixmedins_code = $1",
            facility,
        )
        await conn.close()
    await service.admin_ok(
        "POST", f"/v1/settlements/{own['setl_id']}/admin-reversal", {"reason": "test over"}
    )


async def test_a_later_policy_lowering_the_limit_holds_no_earlier_settlement(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A settlement legal under 2026.1 stays in the figures when a later policy lowers the
    settlement limit below it: aggregates hold rows to the largest limit of any policy."""
    victim = await world.patient(balance=50000)
    made = await victim.settle("310", "21", lines(("A-AMOX", 100000, 3)))
    day = dt.date(2022, 1, 1) + dt.timedelta(days=secrets.randbelow(300))
    conn = await asyncpg.connect(world.service.database_url)
    try:
        await conn.execute(
            "UPDATE settlements SET setl_date = $2 WHERE setl_id = $1", made["setl_id"], day
        )
    finally:
        await conn.close()
    later = json.loads((params.POLICY_DIR / f"{CURRENT_POLICY_VERSION}.json").read_bytes())
    lower = made["medfee_sumamt"] - 1
    later |= {
        "version": "2099.1",
        "amount_limits": {
            "unit_price": lower,
            "quantity": 10,
            "line_total": lower,
            "settlement_total": lower,
        },
        "supervision": {**later["supervision"], "large_claim_fen": lower - 1},
    }
    shutil.copy(params.POLICY_DIR / f"{CURRENT_POLICY_VERSION}.json", tmp_path)
    (tmp_path / "2099.1.json").write_text(json.dumps(later))
    monkeypatch.setattr(params, "POLICY_DIR", tmp_path)
    monkeypatch.setattr(fundparts, "POLICY_DIR", tmp_path, raising=False)
    monkeypatch.setattr(fundparts, "CURRENT_POLICY_VERSION", "2099.1", raising=False)
    _forget_policies()
    try:
        report = await world.service.admin_ok(
            "GET", f"/v1/reports/funds?from={day.isoformat()}&to={day.isoformat()}"
        )
    finally:
        monkeypatch.undo()
        _forget_policies()
    assert report["out_of_limits"] == 0, report
    assert report["medfee_sumamt"] == made["medfee_sumamt"]


def _forget_policies() -> None:
    # load_params keeps its cache: the loaded 2026.1 stays the object every module holds,
    # and 2099.1 is read from the temporary folder the first time it is asked for.
    cached = getattr(fundparts.settlement_limit, "cache_clear", None)
    if cached is not None:
        cached()
