"""Card rules of issue #11, through the HTTP API on real PostgreSQL and hsm_stub: an expired
card is refused (item 5), one PIN entry pays for one settlement (item 6), and a card that is
not active shows its status and nothing of its holder (item 7)."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from cardsvc import clock
from cardsvc.cardauth.services import TOKEN_USE_INDEX
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

FEE = lines(("A-AMOX", 1000, 1))


@dataclass
class Desk:
    service: Service
    counter: TerminalClient
    pos: TerminalClient
    kiosk: TerminalClient

    async def patient(self, balance: int = 10000) -> Patient:
        return await patient(self.service, self.pos, self.counter, balance=balance)

    async def sql(self, query: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.service.database_url)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    async def expire(self, card_no: str, days_ago: int = 1) -> None:
        expiry = clock.business_date() - dt.timedelta(days=days_ago)
        await self.sql("UPDATE cards SET expiry_date = $2 WHERE card_no = $1", card_no, expiry)

    async def settlements_of(self, psn_no: str) -> int:
        return int(await self.sql("SELECT count(*) FROM settlements WHERE psn_no = $1", psn_no))

    async def balance(self, psn_no: str) -> int:
        return int(await self.sql("SELECT balance FROM psn_accounts WHERE psn_no = $1", psn_no))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def desk(service: Service) -> Desk:
    await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})
    facility = await service.facility(level="2")
    return Desk(
        service,
        await service.terminal("counter"),
        await service.terminal("pos", facility["fixmedins_code"]),
        await service.terminal("kiosk"),
    )


def _code(resp: Any) -> tuple[int, str]:
    return resp.status, resp.body["error"]["code"]


# ---------------------------------------------------------------- item 5: card expiry


@pytest.mark.parametrize("purpose", ["identify", "transaction"])
async def test_an_expired_card_cannot_authenticate(desk: Desk, purpose: str):
    p = await desk.patient()
    await desk.expire(p.card.card_no)
    resp = await desk.pos.request(
        "POST", "/v1/card-auth/challenge", {"card_no": p.card.card_no, "purpose": purpose}
    )
    assert _code(resp) == (422, "CARD_EXPIRED")
    expiry = (clock.business_date() - dt.timedelta(days=1)).isoformat()
    assert resp.body["error"]["details"] == {"expiry_date": expiry}
    assert expiry in resp.body["error"]["message"]


async def test_a_card_expiring_today_is_valid_today(desk: Desk):
    p = await desk.patient()
    await desk.expire(p.card.card_no, days_ago=0)
    auth = await authenticate_card(desk.pos, p.card, "transaction")
    p.token = auth["card_token"]
    assert (await p.settle("310", "11", FEE))["status"] == "settled"


async def test_a_card_that_expired_after_its_challenge_fails_verify(desk: Desk):
    p = await desk.patient()
    ch = await desk.pos.call(
        "POST", "/v1/card-auth/challenge", {"card_no": p.card.card_no, "purpose": "identify"}
    )
    await desk.expire(p.card.card_no)
    cryptogram = p.card.card.internal_authenticate(1, bytes.fromhex(ch["challenge"]))
    resp = await desk.pos.request(
        "POST",
        "/v1/card-auth/verify",
        {"auth_id": ch["auth_id"], "card_sn": p.card.card_sn, "cryptogram": cryptogram.hex()},
    )
    assert _code(resp) == (422, "CARD_EXPIRED")


async def test_a_token_from_before_the_expiry_cannot_settle(desk: Desk):
    p = await desk.patient(balance=5000)
    await desk.expire(p.card.card_no)  # after the card authenticated
    preview = await p.request("/v1/settlements/preview", "310", "11", FEE)
    assert _code(preview) == (422, "CARD_EXPIRED")
    resp = await p.request("/v1/settlements", "310", "11", FEE)
    assert _code(resp) == (422, "CARD_EXPIRED")
    assert await desk.settlements_of(p.psn_no) == 0
    assert await desk.balance(p.psn_no) == 5000


# ---------------------------------------------------------------- item 6: one PIN, one settlement


async def test_a_card_token_pays_for_one_settlement(desk: Desk):
    p = await desk.patient(balance=5000)
    first = await p.request("/v1/settlements", "310", "11", FEE, token=p.token)
    assert first.status == 200
    second = await p.request("/v1/settlements", "310", "11", FEE, token=p.token)
    assert _code(second) == (409, "CARD_TOKEN_USED")
    assert "authenticate the card again" in second.body["error"]["message"]
    assert await desk.settlements_of(p.psn_no) == 1
    assert await desk.balance(p.psn_no) == 4000
    # A new PIN entry pays for the next one.
    again = await p.request("/v1/settlements", "310", "11", FEE, token=await p.fresh_token())
    assert again.status == 200 and await desk.settlements_of(p.psn_no) == 2


async def test_a_retry_with_the_used_token_or_a_fresh_one_gets_the_original(desk: Desk):
    p = await desk.patient(balance=5000)
    key = unique_code("IK-")
    body = {
        "card_token": p.token,
        "insutype": "310",
        "med_type": "11",
        "mdtrt_id": unique_code("MD"),
        "feedetail": FEE,
    }
    headers = {"Idempotency-Key": key}
    first = await p.terminal.request("POST", "/v1/settlements", body, headers)
    retry = await p.terminal.request("POST", "/v1/settlements", body, headers)
    assert first.status == retry.status == 200 and retry.body == first.body
    fresh = {**body, "card_token": await p.fresh_token()}
    again = await p.terminal.request("POST", "/v1/settlements", fresh, headers)
    assert again.status == 200 and again.body == first.body
    assert await desk.settlements_of(p.psn_no) == 1
    # The used token itself pays for nothing new.
    spent = await p.terminal.request(
        "POST",
        "/v1/settlements",
        {**body, "mdtrt_id": unique_code("MD")},
        {"Idempotency-Key": unique_code("IK-")},
    )
    assert _code(spent) == (409, "CARD_TOKEN_USED")
    # The fresh token was not spent by the retry: it pays for another visit.
    other = await p.terminal.request(
        "POST", "/v1/settlements", {**fresh, "mdtrt_id": unique_code("MD")}, {}
    )
    assert other.status == 400  # no key
    other = await p.terminal.request(
        "POST",
        "/v1/settlements",
        {**fresh, "mdtrt_id": unique_code("MD")},
        {"Idempotency-Key": unique_code("IK-")},
    )
    assert other.status == 200 and await desk.settlements_of(p.psn_no) == 2


async def test_previews_and_refusals_do_not_spend_the_token(desk: Desk):
    p = await desk.patient(balance=5000)
    for _ in range(2):
        preview = await p.request("/v1/settlements/preview", "310", "11", FEE, token=p.token)
        assert preview.status == 200
    unknown = await p.request("/v1/settlements", "310", "11", lines(("NOPE", 1, 1)), token=p.token)
    assert _code(unknown) == (422, "UNKNOWN_ITEM")
    done = await p.request("/v1/settlements", "310", "11", FEE, token=p.token)
    assert done.status == 200 and await desk.settlements_of(p.psn_no) == 1
    # It was the settlement, not the previews or the refusal, that spent it.
    after = await p.request("/v1/settlements", "310", "11", FEE, token=p.token)
    assert _code(after) == (409, "CARD_TOKEN_USED")


async def test_settlements_racing_with_one_token_settle_once(desk: Desk):
    p = await desk.patient(balance=50000)
    results = await asyncio.gather(
        *[p.request("/v1/settlements", "310", "11", FEE, token=p.token) for _ in range(8)]
    )
    statuses = sorted(r.status for r in results)
    assert statuses == [200] + [409] * 7, [r.body for r in results]
    assert {r.body["error"]["code"] for r in results if r.status == 409} == {"CARD_TOKEN_USED"}
    assert await desk.settlements_of(p.psn_no) == 1
    assert await desk.balance(p.psn_no) == 49000


async def test_the_token_use_is_a_unique_index_in_the_settlements_table(desk: Desk):
    """The durable record: the index the service maps to CARD_TOKEN_USED exists, on a logged
    table, so a second settlement can never be stored with the same token, even by a path
    that skipped the read."""
    found = await desk.sql(
        "SELECT c.relpersistence::text FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        " JOIN pg_class x ON x.oid = i.indexrelid WHERE x.relname = $1 AND i.indisunique",
        TOKEN_USE_INDEX,
    )
    assert found == "p"  # permanent: WAL-logged with the settlement
    p = await desk.patient()
    done = await p.settle("310", "11", FEE)
    conn = await asyncpg.connect(desk.service.database_url)
    try:
        # Another settlement row with the same token's id, as a path skipping the read
        # would write it: refused by the index the service maps to CARD_TOKEN_USED.
        with pytest.raises(asyncpg.UniqueViolationError) as refused:
            await conn.execute(
                "INSERT INTO settlements SELECT (jsonb_populate_record(s, jsonb_build_object("
                "'setl_id', s.setl_id || 'X', 'idempotency_key', s.idempotency_key || 'X'))).*"
                " FROM settlements s WHERE setl_id = $1",
                done["setl_id"],
            )
        assert refused.value.constraint_name == TOKEN_USE_INDEX
    finally:
        await conn.close()


# ---------------------------------------------------------------- item 7: a lost card at the kiosk


def _reveals_nothing(answer: Any, p: Patient) -> None:
    text = msgspec.json.encode(answer).decode()
    for secret in (p.person["psn_name"], p.person["certno"], p.psn_no, p.card.card_sn):
        assert secret not in text, (secret, text)
    for field in ("baseinfo", "insuinfo", "balc", "settlements", "psn_no"):
        assert field not in text, (field, text)


async def test_a_lost_card_at_the_kiosk_shows_its_status_and_nothing_else(desk: Desk):
    p = await desk.patient(balance=7000)
    await p.settle("310", "11", FEE)
    before = await authenticate_card(desk.kiosk, p.card, "identify")  # while still active
    assert before["baseinfo"]["psn_name"] == p.person["psn_name"]
    await desk.counter.call("POST", f"/v1/cards/{p.card.card_no}/report-loss")

    auth = await authenticate_card(desk.kiosk, p.card, "identify")
    assert auth["card_status"] == "loss_reported"
    assert set(auth) == {"card_token", "expires_at", "purpose", "card_no", "card_status"}
    _reveals_nothing({k: v for k, v in auth.items() if k != "card_token"}, p)

    for token in (auth["card_token"], before["card_token"]):
        summary = await desk.kiosk.call("POST", "/v1/kiosk/summary", {"card_token": token})
        assert summary == {"card_no": p.card.card_no, "card_status": "loss_reported"}
        lost = await desk.kiosk.request("POST", "/v1/kiosk/report-loss", {"card_token": token})
        assert _code(lost) == (409, "CARD_STATE")
        _reveals_nothing(lost.body, p)


async def test_reporting_loss_at_the_kiosk_answers_the_status_only(desk: Desk):
    p = await desk.patient()
    auth = await authenticate_card(desk.kiosk, p.card, "identify")
    lost = await desk.kiosk.call(
        "POST", "/v1/kiosk/report-loss", {"card_token": auth["card_token"]}
    )
    assert lost == {"card_no": p.card.card_no, "card_status": "loss_reported"}


@pytest.mark.parametrize("action", ["cancel", "replace"])
async def test_a_retired_card_shows_its_status_only_to_an_earlier_token(desk: Desk, action: str):
    p = await desk.patient(balance=7000)
    auth = await authenticate_card(desk.kiosk, p.card, "identify")
    await desk.counter.call("POST", f"/v1/cards/{p.card.card_no}/{action}")
    status = "cancelled" if action == "cancel" else "replaced"
    summary = await desk.kiosk.call("POST", "/v1/kiosk/summary", {"card_token": auth["card_token"]})
    assert summary == {"card_no": p.card.card_no, "card_status": status}


async def test_an_expired_card_at_the_kiosk_shows_nothing(desk: Desk):
    p = await desk.patient(balance=7000)
    auth = await authenticate_card(desk.kiosk, p.card, "identify")
    await desk.expire(p.card.card_no)
    resp = await desk.kiosk.request("POST", "/v1/kiosk/summary", {"card_token": auth["card_token"]})
    assert _code(resp) == (422, "CARD_EXPIRED")
    _reveals_nothing(resp.body, p)
