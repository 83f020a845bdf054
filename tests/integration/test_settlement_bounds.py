"""Issue #11 items 4 and 8, through the HTTP API on real PostgreSQL and hsm_stub: amounts
bounded by the policy file, aggregates that one impossible row cannot poison, the
administrator's reversal, and an Idempotency-Key that is the person's as well as the body's."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import pytest_asyncio

from cardsvc.settlement.params import CURRENT_POLICY_VERSION, load_params
from cardsvc.terminal.client import TerminalClient
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
    flags = await world.service.admin_ok("GET", "/v1/supervision/flags?rule=LARGE_CLAIM&limit=1000")
    mine = {f["setl_id"]: f["details"] for f in flags if f["psn_no"] == p.psn_no}
    assert at["setl_id"] not in mine
    assert mine[above["setl_id"]] == {"medfee_sumamt": threshold + 1, "threshold_fen": threshold}
