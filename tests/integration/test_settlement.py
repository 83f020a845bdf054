"""Settlement through the HTTP API with signed terminals, on real PostgreSQL and hsm_stub:
docs/policy.md's worked examples end to end (year-to-date state built by the same person's
earlier settlements), eligibility codes, idempotency, concurrency and reversal."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from cardsvc.ledger import services as ledger
from cardsvc.ledger.postings import CONTRIB_PERSONAL_ACCOUNT, Posting, person_account
from cardsvc.terminal_sdk.client import TerminalClient
from tests.support.api import (
    POLICY_CATALOG,
    Patient,
    Service,
    authenticate_card,
    credit,
    lines,
    patient,
    unique_code,
)
from tests.unit.settlement import reference as ref

pytestmark = pytest.mark.asyncio(loop_scope="session")

STEP3 = ref.STEP3_FIELDS


@dataclass
class World:
    service: Service
    counter: TerminalClient
    level3: TerminalClient
    level2: TerminalClient
    level1: TerminalClient
    community: TerminalClient
    pharmacy: TerminalClient

    async def patient(self, at: TerminalClient, **kwargs) -> Patient:
        return await patient(self.service, at, self.counter, **kwargs)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(service: Service) -> World:
    await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})
    pos = {}
    for name, extra in {
        "level3": {"level": "3"},
        "level2": {"level": "2"},
        "level1": {"level": "1"},
        "community": {"level": "community"},
        "pharmacy": {"type": "pharmacy", "level": None, "agreements": ["310", "410"]},
    }.items():
        facility = await service.facility(**extra)
        pos[name] = await service.terminal("pos", facility["fixmedins_code"])
    return World(service, await service.terminal("counter"), **pos)


def _assert_split(result: dict, expected: dict) -> None:
    for field, value in expected.items():
        assert result[field] == value, (field, result[field], value, result)
    assert result["medfee_sumamt"] == (
        result["fulamt_ownpay_amt"]
        + result["overlmt_selfpay"]
        + result["preselfpay_amt"]
        + result["inscp_scp_amt"]
    )
    assert result["fund_pay_sumamt"] == sum(d["fund_payamt"] for d in result["setldetail"])
    assert result["psn_part_amt"] == result["medfee_sumamt"] - result["fund_pay_sumamt"]
    assert result["psn_cash_pay"] == result["psn_part_amt"] - result["acct_pay"]


async def test_e1_employee_first_admission(world: World):
    p = await world.patient(world.level3, balance=50000)
    result = await p.settle(
        "310", "21", lines(("A-AMOX", 100000, 3), ("B-CEF", 2500, 4), ("C-VIT", 3000, 1))
    )
    _assert_split(
        result,
        {
            "medfee_sumamt": 313000,
            "fulamt_ownpay_amt": 3000,
            "overlmt_selfpay": 2000,
            "preselfpay_amt": 800,
            "inscp_scp_amt": 307200,
            "act_pay_dedc": 80000,
            "hifp_pay": 181760,
            "pool_prop_selfpay": 45440,
            "acct_pay": 50000,
            "fund_pay_sumamt": 181760,
            "psn_part_amt": 131240,
            "psn_cash_pay": 81240,
            "balc": 0,
            "setldetail": [{"fund_pay_type": "310100", "fund_payamt": 181760}],
            "review_required": False,
            "status": "settled",
        },
    )
    assert result["setl_id"].startswith("S") and result["setl_time"]
    person = await world.service.admin_ok("GET", f"/v1/persons/{p.psn_no}")
    assert person["balc"] == 0


async def test_e2_retired_outpatient_with_segment_built_by_earlier_visit(world: World):
    p = await world.patient(world.community, psn_type="retired")
    first = await p.settle("310", "11", lines(("A-AMOX", 65000, 1)))
    assert first["act_pay_dedc"] == 65000 and first["hifp_pay"] == 0
    await credit(world.service, p.psn_no, 3000)
    result = await p.settle("310", "11", lines(("A-AMOX", 12000, 1), ("B-CEF", 1800, 2)))
    _assert_split(
        result,
        {
            "medfee_sumamt": 15600,
            "preselfpay_amt": 360,
            "inscp_scp_amt": 15240,
            "act_pay_dedc": 5000,
            "hifp_pay": 6516,
            "pool_prop_selfpay": 724,
            "acct_pay": 3000,
            "psn_cash_pay": 6084,
            "balc": 0,
        },
    )
    # The segment is now full (70000): the next visit's in-scope goes straight to the fund.
    after = await p.settle("310", "11", lines(("A-AMOX", 1000, 1)))
    assert after["act_pay_dedc"] == 0 and after["hifp_pay"] == 900


async def test_e3_pharmacy_purchase(world: World):
    p = await world.patient(world.pharmacy, balance=10000)
    result = await p.settle("310", "41", lines(("B-CEF", 1800, 3), ("C-VIT", 2000, 1)))
    _assert_split(
        result,
        {
            "medfee_sumamt": 7400,
            "fulamt_ownpay_amt": 2000,
            "preselfpay_amt": 540,
            "inscp_scp_amt": 4860,
            "hifp_pay": 0,
            "acct_pay": 5400,
            "psn_cash_pay": 2000,
            "balc": 4600,
            "setldetail": [],
        },
    )


async def test_e4_work_injury(world: World, service: Service):
    p = await world.patient(world.level2, insutypes=("310", "410"))
    case = await service.admin_ok(
        "POST",
        "/v1/injury-cases",
        {
            "psn_no": p.psn_no,
            "employer": "无锡某厂",
            "injury_date": "2026-01-01",
            "valid_from": "2026-01-01",
            "valid_to": "2027-12-31",
        },
    )
    fee = lines(("W-SUT", 50000, 2), ("A-AMOX", 3000, 1))
    result = await p.settle("410", "21", fee, injury_case_id=case["case_id"])
    _assert_split(
        result,
        {
            "medfee_sumamt": 103000,
            "fulamt_ownpay_amt": 3000,
            "inscp_scp_amt": 100000,
            "setldetail": [{"fund_pay_type": "410100", "fund_payamt": 100000}],
            "acct_pay": 0,
            "psn_cash_pay": 3000,
        },
    )
    refused = await p.request("/v1/settlements", "410", "21", fee)
    assert refused.status == 422 and refused.body["error"]["code"] == "INJURY_CASE_INVALID"


async def test_e5_resident_outpatient_with_fund_built_by_earlier_visit(world: World):
    p = await world.patient(world.level1, psn_type="resident", insutypes=("390",))
    first = await p.settle("390", "11", lines(("A-AMOX", 96000, 1)))
    assert first["hifp_pay"] == 48000
    result = await p.settle("390", "11", lines(("A-AMOX", 10000, 1)))
    _assert_split(
        result,
        {
            "inscp_scp_amt": 10000,
            "hifp_pay": 2000,
            "pool_prop_selfpay": 8000,
            "psn_cash_pay": 8000,
            "setldetail": [{"fund_pay_type": "390100", "fund_payamt": 2000}],
        },
    )


async def test_e6_maternity_delivery_once_a_year(world: World):
    p = await world.patient(world.level3, psn_type="in_service", insutypes=("510",))
    fee = lines(("A-AMOX", 400000, 1), ("B-STENT", 200000, 1), ("C-VIT", 5000, 1))
    result = await p.settle("510", "52", fee, delivery_type="cesarean")
    _assert_split(
        result,
        {
            "medfee_sumamt": 605000,
            "fulamt_ownpay_amt": 5000,
            "inscp_scp_amt": 600000,
            "setldetail": [{"fund_pay_type": "510100", "fund_payamt": 500000}],
            "psn_cash_pay": 105000,
        },
    )
    again = await p.request("/v1/settlements", "510", "52", fee, delivery_type="normal")
    assert again.status == 422 and again.body["error"]["code"] == "MATERNITY_LIMIT"
    untyped = await p.request("/v1/settlements", "510", "52", fee)
    assert untyped.status == 422 and untyped.body["error"]["code"] == "DELIVERY_TYPE_REQUIRED"


async def test_second_admission_halves_the_deductible_and_the_cap_holds(world: World):
    p = await world.patient(world.level3)
    first = await p.settle("310", "21", lines(("A-AMOX", 25_000_000, 1)))
    assert first["act_pay_dedc"] == 80000 and first["hifp_pay"] == 19_936_000
    second = await p.settle("310", "21", lines(("A-AMOX", 1_000_000, 1)))
    assert second["act_pay_dedc"] == 40000
    assert second["hifp_pay"] == 64000  # only what is left of the 20,000,000 annual cap
    third = await p.settle("310", "21", lines(("A-AMOX", 500_000, 1)))
    assert third["hifp_pay"] == 0 and third["pool_prop_selfpay"] == 500_000 - 40000


async def test_preview_writes_nothing(world: World):
    p = await world.patient(world.level3, balance=50000)
    fee = lines(("A-AMOX", 100000, 3), ("B-CEF", 2500, 4), ("C-VIT", 3000, 1))
    preview = await p.request("/v1/settlements/preview", "310", "21", fee)
    assert preview.status == 200 and preview.body["setl_id"] is None
    assert preview.body["status"] == "preview" and preview.body["hifp_pay"] == 181760
    again = await p.request("/v1/settlements/preview", "310", "21", fee)
    assert again.body["acct_pay"] == 50000 and again.body["act_pay_dedc"] == 80000


async def test_idempotent_retry_and_key_reuse(world: World):
    p = await world.patient(world.level2, balance=100000)
    key = unique_code("IK-")
    body = {
        "card_token": p.token,
        "insutype": "310",
        "med_type": "11",
        "mdtrt_id": "MD1",
        "feedetail": lines(("A-AMOX", 5000, 1)),
    }
    headers = {"Idempotency-Key": key}
    first = await p.terminal.request("POST", "/v1/settlements", body, headers)
    second = await p.terminal.request("POST", "/v1/settlements", body, headers)
    assert first.status == second.status == 200
    assert first.body == second.body
    person = await world.service.admin_ok("GET", f"/v1/persons/{p.psn_no}")
    assert person["balc"] == 100000 - 5000
    # The terminal authenticated the card again before retrying: still the same settlement.
    fresh = await authenticate_card(p.terminal, p.card, "transaction")
    third = await p.terminal.request(
        "POST", "/v1/settlements", {**body, "card_token": fresh["card_token"]}, headers
    )
    assert third.status == 200 and third.body == first.body
    other = await p.terminal.request(
        "POST", "/v1/settlements", {**body, "feedetail": lines(("A-AMOX", 5001, 1))}, headers
    )
    assert other.status == 409 and other.body["error"]["code"] == "IDEMPOTENCY_MISMATCH"
    missing = await p.terminal.request("POST", "/v1/settlements", body)
    assert missing.status == 400 and missing.body["error"]["code"] == "IDEMPOTENCY_KEY_REQUIRED"


async def test_fifty_concurrent_settlements_of_one_person(world: World):
    # A terminal of its own: its 100 card authentications start from a full rate bucket.
    facility = await world.service.facility(level="2")
    pos = await world.service.terminal("pos", facility["fixmedins_code"])
    p = await world.patient(pos, balance=20000)
    fee = lines(("A-AMOX", 1000, 1))
    tokens = [await p.fresh_token() for _ in range(50)]  # one PIN entry per settlement
    await asyncio.sleep(1.5)  # the 100 card-auth requests used the terminal's burst allowance
    results = await asyncio.gather(
        *[p.request("/v1/settlements", "310", "11", fee, token=t) for t in tokens]
    )
    assert [r.status for r in results] == [200] * 50
    bodies = sorted((r.body for r in results), key=lambda b: b["setl_time"])
    # As if one after the other: the account pays the first 20 visits in full, then nothing;
    # the balances after each are distinct and step down by 1000.
    assert sorted(b["balc"] for b in bodies) == sorted(
        max(0, 20000 - 1000 * i) for i in range(1, 51)
    )
    assert sum(b["acct_pay"] for b in bodies) == 20000
    assert sum(b["act_pay_dedc"] for b in bodies) == 50 * 1000 - 20000
    person = await world.service.admin_ok("GET", f"/v1/persons/{p.psn_no}")
    assert person["balc"] == 0


async def _metric(service: Service, name: str) -> float:
    async with service.http.get(service.base_url + "/metrics") as resp:
        text = await resp.text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


async def test_a_settlement_whose_account_changed_after_its_read_is_computed_again(
    world: World,
):
    """The account is credited while a settlement is between its read and its write: the
    write must not go through on the stale balance; the settlement is computed again from
    the credited balance and stored once."""
    p = await world.patient(world.level2, balance=300)
    lost_before = await _metric(world.service, "cardsvc_settlement_races_lost_total")
    conn = await asyncpg.connect(world.service.database_url)
    try:
        credit = conn.transaction()
        await credit.start()
        # A credit of 700, written as the service writes one, left uncommitted for now.
        await conn.execute(
            "UPDATE psn_accounts SET balance = balance + 700 WHERE psn_no = $1", p.psn_no
        )
        await ledger.post(
            conn,
            "account_credit",
            unique_code("CR"),
            [
                Posting(CONTRIB_PERSONAL_ACCOUNT, "D", 700),
                Posting(person_account(p.psn_no), "C", 700),
            ],
        )
        settling = asyncio.create_task(p.settle("310", "11", lines(("A-AMOX", 1000, 1))))
        # Only the settlement's write waits for our row lock: its read has seen the old
        # balance by then.
        for _ in range(500):
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
            )
            if waiting:
                break
            await asyncio.sleep(0.01)
        assert waiting, "the settlement's write never waited for the account"
        await credit.commit()
        result = await settling
        assert result["acct_pay"] == 1000 and result["balc"] == 0  # paid from 300 + 700
        stored = await conn.fetchval("SELECT count(*) FROM settlements WHERE psn_no = $1", p.psn_no)
        assert stored == 1
        entries = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE object_id = $1", result["setl_id"]
        )
        assert entries == 1
    finally:
        await conn.close()
    assert await _metric(world.service, "cardsvc_settlement_races_lost_total") == lost_before + 1
    proof = await world.service.admin_ok("GET", "/v1/ledger/proof")
    assert proof["unbooked_settlements"] == [] and proof["unbalanced"] == []


async def test_reversal_gives_back_everything_once(world: World):
    p = await world.patient(world.level3, balance=50000)
    fee = lines(("A-AMOX", 100000, 3), ("B-CEF", 2500, 4), ("C-VIT", 3000, 1))
    first = await p.settle("310", "21", fee)
    reversal = await p.terminal.call("POST", f"/v1/settlements/{first['setl_id']}/reverse")
    assert reversal["acct_refund"] == 50000 and reversal["fund_refund"] == 181760
    assert reversal["balc"] == 50000
    again = await p.terminal.call(
        "POST", f"/v1/settlements/{first['setl_id']}/reverse", {"reason": "retry"}
    )
    assert again == reversal
    stored = await p.terminal.call("GET", f"/v1/settlements/{first['setl_id']}")
    assert stored["status"] == "reversed"
    # The year state is back to a first admission: full deductible, not halved.
    redo = await p.settle("310", "21", fee)
    assert {k: redo[k] for k in STEP3} == {k: first[k] for k in STEP3}


async def test_only_the_own_facility_may_reverse_or_read(world: World):
    p = await world.patient(world.level3)
    result = await p.settle("310", "11", lines(("A-AMOX", 1000, 1)))
    other = await world.level2.request("POST", f"/v1/settlements/{result['setl_id']}/reverse")
    assert other.status == 403 and other.body["error"]["code"] == "NOT_OWN_FACILITY"
    read = await world.level2.request("GET", f"/v1/settlements/{result['setl_id']}")
    assert read.status == 403 and read.body["error"]["code"] == "NOT_OWN_FACILITY"
    status, body = await world.service.admin("GET", f"/v1/settlements/{result['setl_id']}")
    assert status == 200 and body["setl_id"] == result["setl_id"]


async def test_eligibility_codes(world: World, service: Service):
    p = await world.patient(world.level2, insutypes=("310",))
    fee = lines(("A-AMOX", 1000, 1))
    cases = [
        (("390", "11", fee), {}, 422, "INSURANCE_NOT_ACTIVE"),
        (("310", "41", fee), {}, 422, "MED_TYPE_NOT_ALLOWED"),
        (("310", "11", lines(("NOPE-1", 1, 1), ("NOPE-2", 1, 1))), {}, 422, "UNKNOWN_ITEM"),
    ]
    for args, extra, status, code in cases:
        resp = await p.request("/v1/settlements", *args, **extra)
        assert (resp.status, resp.body["error"]["code"]) == (status, code), resp.body
    resp = await p.request(
        "/v1/settlements", "310", "11", lines(("NOPE-2", 1, 1), ("NOPE-1", 1, 1))
    )
    assert resp.body["error"]["details"]["codes"] == ["NOPE-1", "NOPE-2"]

    no_390 = await service.facility(level="1", agreements=["310"])
    pos = await service.terminal("pos", no_390["fixmedins_code"])
    r = await world.patient(pos, psn_type="resident", insutypes=("390",))
    resp = await r.request("/v1/settlements", "390", "11", fee)
    assert resp.status == 422 and resp.body["error"]["code"] == "NO_AGREEMENT"

    await world.counter.call("POST", f"/v1/cards/{p.card.card_no}/report-loss")
    resp = await p.request("/v1/settlements", "310", "11", fee)
    assert resp.status == 422 and resp.body["error"]["code"] == "CARD_NOT_ACTIVE"
    assert resp.body["error"]["details"]["status"] == "loss_reported"

    await service.admin_ok(
        "POST",
        f"/v1/facilities/{no_390['fixmedins_code']}/credit-rating",
        {"credit_rating": "D", "reason": "suspended for the test"},
    )
    resp = await r.request("/v1/settlements", "390", "11", fee)
    assert resp.status == 403 and resp.body["error"]["code"] == "FACILITY_SUSPENDED"


async def test_a_settlement_is_admitted_by_its_own_read(world: World):
    """Settlement records its nonce and reads its terminal's standing in its first read:
    replays and disabled terminals are refused there exactly as on every other route, on
    the path with a valid card token and on the path without one."""
    facility = await world.service.facility(level="2")
    pos = await world.service.terminal("pos", facility["fixmedins_code"])
    p = await world.patient(pos, balance=5000)
    body = msgspec.json.encode(
        {
            "card_token": p.token,
            "insutype": "310",
            "med_type": "11",
            "mdtrt_id": unique_code("MD"),
            "feedetail": lines(("A-AMOX", 1000, 1)),
        }
    )
    headers = pos.signed_headers("POST", "/v1/settlements", body)
    headers["Idempotency-Key"] = unique_code("IK")
    first = await pos.send("POST", "/v1/settlements", body, headers)
    assert first.status == 200
    again = await pos.send("POST", "/v1/settlements", body, headers)
    assert again.status == 401 and again.body["error"]["code"] == "NONCE_REPLAYED"
    # A new settlement (another key, another visit) signed with a nonce already used: it is
    # computed, and its write records nothing.
    other = body.replace(b'"mdtrt_id":"', b'"mdtrt_id":"X')
    reused = pos.signed_headers("POST", "/v1/settlements", other, nonce=headers["X-Nonce"])
    reused["Idempotency-Key"] = unique_code("IK")
    refused = await pos.send("POST", "/v1/settlements", other, reused)
    assert refused.status == 401 and refused.body["error"]["code"] == "NONCE_REPLAYED"

    no_token = body.replace(p.token.encode(), b"x" * len(p.token))
    headers = pos.signed_headers("POST", "/v1/settlements", no_token)
    headers["Idempotency-Key"] = unique_code("IK")
    refused = await pos.send("POST", "/v1/settlements", no_token, headers)
    assert refused.status == 401 and refused.body["error"]["code"] == "CARD_TOKEN_INVALID"
    again = await pos.send("POST", "/v1/settlements", no_token, headers)
    assert again.status == 401 and again.body["error"]["code"] == "NONCE_REPLAYED"

    await world.service.admin_ok(
        "PATCH", f"/v1/terminals/{pos.terminal_id}", {"status": "disabled"}
    )
    disabled = await p.request("/v1/settlements", "310", "11", lines(("A-AMOX", 1000, 1)))
    assert disabled.status == 403 and disabled.body["error"]["code"] == "TERMINAL_DISABLED"
    person = await world.service.admin_ok("GET", f"/v1/persons/{p.psn_no}")
    assert person["balc"] == 4000  # the first settlement only


async def test_card_token_rules(world: World):
    p = await world.patient(world.level2)
    fee = lines(("A-AMOX", 1000, 1))
    identify = await authenticate_card(world.level2, p.card, "identify")
    body = {
        "card_token": identify["card_token"],
        "insutype": "310",
        "med_type": "11",
        "mdtrt_id": "MD",
        "feedetail": fee,
    }
    resp = await world.level2.request("POST", "/v1/settlements/preview", body)
    assert resp.status == 403 and resp.body["error"]["code"] == "CARD_TOKEN_PURPOSE"
    resp = await world.level3.request(
        "POST", "/v1/settlements/preview", {**body, "card_token": p.token}
    )
    assert resp.status == 401 and resp.body["error"]["code"] == "CARD_TOKEN_INVALID"
    resp = await world.level2.request(
        "POST", "/v1/settlements/preview", {**body, "card_token": p.token + "x"}
    )
    assert resp.status == 401 and resp.body["error"]["code"] == "CARD_TOKEN_INVALID"
    resp = await world.counter.request(
        "POST", "/v1/settlements/preview", {**body, "card_token": p.token}
    )
    assert resp.status == 403 and resp.body["error"]["code"] == "TERMINAL_KIND_NOT_ALLOWED"


async def test_ledger_proves_after_all_of_it(world: World, service: Service):
    proof = await service.admin_ok("GET", "/v1/ledger/proof")
    assert proof["ok"], proof
    assert (await service.admin_ok("GET", "/v1/audit/verify"))["ok"]
