"""Issuance, personalisation and the card life cycle, through the HTTP API."""

from __future__ import annotations

import asyncpg
import pytest

from cardcrypto import profile
from cardsvc.hsm import HsmClient, HsmKeyUsageRefused
from cardsvc.persons import certno
from tests.support.api import Service, authenticate_card, issue_card, personalise
from tests.support.hsm import HsmProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_issue_personalise_activate_and_authenticate_for_transaction(service: Service):
    facility = await service.facility()
    person = await service.person()
    counter = await service.terminal("counter")
    pos = await service.terminal("pos", facility["fixmedins_code"])

    issued = await counter.call("POST", "/v1/cards", {"psn_no": person["psn_no"]})
    assert issued["status"] == "issued"
    assert len(issued["card_no"]) == 9
    assert issued["card_sn"].startswith("320200") and len(issued["card_sn"]) == 32
    assert issued["records"]["ef05"]["01"] == issued["card_sn"]
    assert bytes.fromhex(issued["records"]["ef05"]["07"]).decode() == issued["card_no"]
    assert bytes.fromhex(issued["records"]["ef06"]["08"]).decode() == person["certno_full"]
    assert bytes.fromhex(issued["records"]["ef06"]["09"]).decode("gbk").rstrip() == "张三"
    # The birth date is not stored: it comes from the decrypted number.
    assert issued["records"]["ef06"]["0d"] == person["certno_full"][6:14]
    assert issued["records"]["ef05"]["05"] == issued["issue_date"].replace("-", "")

    card = await personalise(counter, issued, activate=True)
    got = await counter.call("GET", f"/v1/cards/{card.card_no}")
    assert got["status"] == "active"

    result = await authenticate_card(pos, card, "transaction")
    assert result["purpose"] == "transaction"
    assert result["baseinfo"]["psn_no"] == person["psn_no"]
    assert result["baseinfo"]["certno"] == certno.mask(person["certno_full"])
    assert person["certno_full"] not in str(result)
    assert [i["insutype"] for i in result["insuinfo"]] == ["310"]
    assert result["card_token"]


async def test_transaction_cryptogram_needs_pin_on_card(service: Service):
    person = await service.person()
    counter = await service.terminal("counter")
    card = await issue_card(counter, person["psn_no"])
    ch = await counter.call(
        "POST", "/v1/card-auth/challenge", {"card_no": card.card_no, "purpose": "transaction"}
    )
    assert ch["key_ref"] == "02"
    # A terminal that skips VERIFY cannot get K_txn's cryptogram from the card; using K_auth
    # instead does not pass as a transaction cryptogram.
    wrong = card.card.internal_authenticate(profile.KEY_REF_AUTH, bytes.fromhex(ch["challenge"]))
    resp = await counter.request(
        "POST",
        "/v1/card-auth/verify",
        {"auth_id": ch["auth_id"], "card_sn": card.card_sn, "cryptogram": wrong.hex()},
    )
    assert resp.status == 401
    assert resp.body["error"]["code"] == "CARD_CRYPTOGRAM_INVALID"


async def test_challenge_is_single_use_and_bound_to_session(service: Service):
    person = await service.person()
    counter = await service.terminal("counter")
    other = await service.terminal("counter")
    card = await issue_card(counter, person["psn_no"])
    ch = await counter.call(
        "POST", "/v1/card-auth/challenge", {"card_no": card.card_no, "purpose": "identify"}
    )
    cryptogram = card.card.internal_authenticate(1, bytes.fromhex(ch["challenge"])).hex()
    body = {"auth_id": ch["auth_id"], "card_sn": card.card_sn, "cryptogram": cryptogram}
    stolen = await other.request("POST", "/v1/card-auth/verify", body)
    assert stolen.status == 401
    assert stolen.body["error"]["code"] == "CARD_CHALLENGE_INVALID"
    first = await counter.request("POST", "/v1/card-auth/verify", body)
    assert first.status == 200
    again = await counter.request("POST", "/v1/card-auth/verify", body)
    assert again.status == 401


LEGAL = [
    ("issued", "activate", "active"),
    ("issued", "cancel", "cancelled"),
    ("active", "report-loss", "loss_reported"),
    ("active", "cancel", "cancelled"),
    ("loss_reported", "cancel-loss", "active"),
    ("loss_reported", "cancel", "cancelled"),
]
ILLEGAL = [
    ("issued", "report-loss"),
    ("issued", "cancel-loss"),
    ("issued", "replace"),
    ("active", "activate"),
    ("active", "cancel-loss"),
    ("loss_reported", "activate"),
    ("loss_reported", "report-loss"),
    ("cancelled", "activate"),
    ("cancelled", "cancel"),
    ("cancelled", "replace"),
    ("replaced", "activate"),
    ("replaced", "report-loss"),
    ("replaced", "replace"),
]

_PATH_TO = {
    "issued": [],
    "active": ["activate"],
    "loss_reported": ["activate", "report-loss"],
    "cancelled": ["cancel"],
}


async def _card_in(service: Service, counter, state: str):
    person = await service.person()
    card = await issue_card(counter, person["psn_no"], activate=False)
    if state == "replaced":
        await counter.call("POST", f"/v1/cards/{card.card_no}/activate")
        await counter.call("POST", f"/v1/cards/{card.card_no}/replace")
        return card
    for action in _PATH_TO[state]:
        await counter.call("POST", f"/v1/cards/{card.card_no}/{action}")
    return card


@pytest.mark.parametrize(("state", "action", "target"), LEGAL)
async def test_legal_transition(service: Service, state: str, action: str, target: str):
    counter = await service.terminal("counter")
    card = await _card_in(service, counter, state)
    moved = await counter.call("POST", f"/v1/cards/{card.card_no}/{action}")
    assert moved["status"] == target


@pytest.mark.parametrize(("state", "action"), ILLEGAL)
async def test_illegal_transition_is_card_state(service: Service, state: str, action: str):
    counter = await service.terminal("counter")
    card = await _card_in(service, counter, state)
    resp = await counter.request("POST", f"/v1/cards/{card.card_no}/{action}")
    assert resp.status == 409, resp.body
    assert resp.body["error"]["code"] == "CARD_STATE"
    assert resp.body["error"]["details"]["status"] == state


@pytest.mark.parametrize("state", ["active", "loss_reported"])
async def test_replace_issues_a_new_card_and_retires_the_old(service: Service, state: str):
    counter = await service.terminal("counter")
    old = await _card_in(service, counter, state)
    result = await counter.call("POST", f"/v1/cards/{old.card_no}/replace")
    assert result["replaced"]["status"] == "replaced"
    new = result["card"]
    assert new["replaces"] == old.card_no and new["psn_no"] == old.psn_no
    assert new["card_sn"] != old.card_sn
    fresh = await personalise(counter, new, activate=True)
    assert (await authenticate_card(counter, fresh, "identify"))["card_no"] == fresh.card_no
    refused = await counter.request(
        "POST", "/v1/card-auth/challenge", {"card_no": old.card_no, "purpose": "identify"}
    )
    assert refused.status == 422
    assert refused.body["error"]["code"] == "CARD_NOT_ACTIVE"


async def test_one_live_card_per_person(service: Service):
    person = await service.person()
    counter = await service.terminal("counter")
    await issue_card(counter, person["psn_no"], activate=False)
    again = await counter.request("POST", "/v1/cards", {"psn_no": person["psn_no"]})
    assert again.status == 409
    assert again.body["error"]["code"] == "CARD_EXISTS"


async def test_lost_card_cannot_authenticate_for_transactions(service: Service):
    facility = await service.facility()
    person = await service.person()
    counter = await service.terminal("counter")
    pos = await service.terminal("pos", facility["fixmedins_code"])
    card = await issue_card(counter, person["psn_no"])
    await counter.call("POST", f"/v1/cards/{card.card_no}/report-loss")
    resp = await pos.request(
        "POST", "/v1/card-auth/challenge", {"card_no": card.card_no, "purpose": "transaction"}
    )
    assert resp.status == 422
    assert resp.body["error"] == {
        "code": "CARD_NOT_ACTIVE",
        "message": "card is loss_reported: it cannot authenticate for transaction",
        "details": {"status": "loss_reported"},
    }


async def test_issue_for_unknown_person_is_404(service: Service):
    counter = await service.terminal("counter")
    resp = await counter.request("POST", "/v1/cards", {"psn_no": "3202009999999999"})
    assert resp.status == 404
    assert resp.body["error"]["code"] == "PERSON_NOT_FOUND"


async def test_issuance_in_a_region_the_hsm_was_not_provisioned_for_is_refused(service: Service):
    """The HSM creates no issuer keys on demand (issue #11): a clear 422, not a new key."""
    person = await service.person(admdvs="330100")  # the session HSM holds only 320200
    counter = await service.terminal("counter")
    response = await counter.request("POST", "/v1/cards", {"psn_no": person["psn_no"]})
    assert response.status == 422
    assert response.body["error"]["code"] == "REGION_NOT_PROVISIONED"


async def test_registered_terminal_keys_are_bound_to_their_kind(service: Service, hsm: HsmProcess):
    """cardsvc passes the kind at registration, so the HSM itself refuses card keys to any
    terminal but a counter, whatever the host later asks (issue #11)."""
    facility = await service.facility()
    pos = await service.terminal("pos", facility["fixmedins_code"])
    counter = await service.terminal("counter")
    conn = await asyncpg.connect(service.database_url)
    try:
        blobs = dict(
            await conn.fetch(
                "SELECT terminal_id, key_under_lmk FROM terminals WHERE terminal_id = ANY($1)",
                [pos.terminal_id, counter.terminal_id],
            )
        )
    finally:
        await conn.close()
    card_sn = "320200" + "ab" * 13
    async with HsmClient(hsm.host, hsm.port, tls=hsm.client_tls(), connections=1) as client:
        with pytest.raises(HsmKeyUsageRefused):
            await client.build_personalization_blob("320200", card_sn, blobs[pos.terminal_id])
        blob = await client.build_personalization_blob(
            "320200", card_sn, blobs[counter.terminal_id]
        )
    assert profile.unseal_card_keys(counter.terminal_key, card_sn, blob)
