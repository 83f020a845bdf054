"""Issue #11 items 4 and 8, through the HTTP API on real PostgreSQL and hsm_stub: amounts
bounded by the policy file, aggregates that one impossible row cannot poison, the
administrator's reversal, and an Idempotency-Key that is the person's as well as the body's."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import pytest_asyncio

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
