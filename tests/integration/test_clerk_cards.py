"""A clerk changes a card's status from the console: on that person's card only, as a clerk
only, and the audit entry names the operator. The counter terminal keeps its own route."""

from __future__ import annotations

import asyncpg
import msgspec
import pytest

from tests.support.api import Service, issue_card
from tests.support.operators import create_operator

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _post(service: Service, path: str, token: str) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"}
    async with service.http.post(service.base_url + path, headers=headers) as resp:
        return resp.status, msgspec.json.decode(await resp.read())


async def test_a_clerk_reports_a_card_lost_and_cancels_the_loss(service: Service):
    clerk = await create_operator(service.database_url, ("clerk",), name="柜员甲")
    counter = await service.terminal("counter")
    person = await service.person()
    card = await issue_card(counter, person["psn_no"])
    base = f"/v1/persons/{person['psn_no']}/cards/{card.card_no}"

    status, body = await _post(service, f"{base}/report-loss", clerk.token)
    assert status == 200 and body["status"] == "loss_reported"
    status, body = await _post(service, f"{base}/report-loss", clerk.token)
    assert status == 409 and body["error"]["code"] == "CARD_STATE"
    status, body = await _post(service, f"{base}/cancel-loss", clerk.token)
    assert status == 200 and body["status"] == "active"
    assert (await counter.call("GET", f"/v1/cards/{card.card_no}"))["status"] == "active"

    conn = await asyncpg.connect(service.database_url)
    try:
        rows = await conn.fetch(
            "SELECT actor, action, data FROM audit_log WHERE object_type = 'card'"
            " AND object_id = $1 AND actor LIKE 'operator:%' ORDER BY at",
            card.card_no,
        )
    finally:
        await conn.close()
    assert [r["action"] for r in rows] == ["card.report-loss", "card.cancel-loss"]
    for row in rows:
        data = msgspec.json.decode(row["data"])
        assert row["actor"] == f"operator:{clerk.operator_id}"
        assert (data["operator_id"], data["operator_name"]) == (clerk.operator_id, "柜员甲")


async def test_only_that_persons_card_and_only_a_clerk(service: Service):
    clerk = await create_operator(service.database_url, ("clerk",))
    reviewer = await create_operator(service.database_url, ("reviewer", "auditor"))
    counter = await service.terminal("counter")
    owner, other = await service.person(), await service.person()
    card = await issue_card(counter, owner["psn_no"])

    status, body = await _post(
        service, f"/v1/persons/{other['psn_no']}/cards/{card.card_no}/report-loss", clerk.token
    )
    assert status == 404 and body["error"]["code"] == "CARD_NOT_FOUND"
    status, body = await _post(
        service, f"/v1/persons/{owner['psn_no']}/cards/{card.card_no}/cancel", reviewer.token
    )
    assert status == 403 and body["error"]["code"] == "ROLE_NOT_ALLOWED"
    assert (await counter.call("GET", f"/v1/cards/{card.card_no}"))["status"] == "active"
