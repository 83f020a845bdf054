"""The national gateway's core: clients, TIF authentication, the envelope, exactly-once
answers per msgid, 9001/9002 and 1101 (with an identity number and with the card)."""

from __future__ import annotations

import asyncio
import io
import re
import time
from decimal import Decimal

import asyncpg
import msgspec
import pytest

from cardsvc.errors import CardsvcError
from tests.support.api import Service, authenticate_card, issue_card
from tests.support.gateway import (
    PATH,
    GatewayClient,
    card_cert,
    gateway_client,
    register_client,
    tif_headers,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

SIGN_IN = {"signIn": {"opter_no": "OP001", "mac": "00-11-22-33-44-55", "ip": "10.0.0.1"}}


def _query(certno: str, cert_type: str = "02") -> dict[str, object]:
    return {
        "data": {
            "mdtrt_cert_type": cert_type,
            "mdtrt_cert_no": certno,
            "card_sn": "",
            "begntime": "2026-01-01 08:00:00",
            "psn_cert_type": "01",
            "certno": "",
            "psn_name": "",
        }
    }


async def _sql(service: Service, statement: str, *args: object) -> None:
    conn = await asyncpg.connect(service.database_url)
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


# ------------------------------------------------------------------ the clients' admin API


async def test_register_list_and_disable_clients(service: Service):
    facility = (await service.facility())["fixmedins_code"]
    status, created = await service.admin(
        "POST", "/v1/gateway-clients", {"fixmedins_code": facility}
    )
    assert status == 201
    assert set(created) == {"paasid", "secret", "fixmedins_code", "status", "created_at"}
    assert created["fixmedins_code"] == facility and created["status"] == "active"
    assert len(created["secret"]) >= 32
    listed = await service.admin_ok("GET", f"/v1/gateway-clients?fixmedins_code={facility}")
    assert [c["paasid"] for c in listed["clients"]] == [created["paasid"]]
    assert "secret" not in listed["clients"][0]
    everyone = await service.admin_ok("GET", "/v1/gateway-clients")
    assert created["paasid"] in {c["paasid"] for c in everyone["clients"]}
    disabled = await service.admin_ok(
        "PATCH", f"/v1/gateway-clients/{created['paasid']}", {"status": "disabled"}
    )
    assert disabled["status"] == "disabled"
    audit = await _audit_actions(service, created["paasid"])
    assert audit == ["gateway_client.created", "gateway_client.updated"]


async def _audit_actions(service: Service, paasid: str) -> list[str]:
    conn = await asyncpg.connect(service.database_url)
    try:
        rows = await conn.fetch(
            "SELECT action FROM audit_log WHERE object_id = $1 ORDER BY at", paasid
        )
    finally:
        await conn.close()
    return [r["action"] for r in rows]


async def test_the_secret_is_stored_only_encrypted(service: Service):
    client = await register_client(service, (await service.facility())["fixmedins_code"])
    conn = await asyncpg.connect(service.database_url)
    try:
        stored = await conn.fetchval(
            "SELECT secret_enc FROM gateway_clients WHERE paasid = $1", client.paasid
        )
    finally:
        await conn.close()
    assert client.secret.encode() not in bytes(stored)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/gateway-clients", {"fixmedins_code": "HNO0"}, 404, "FACILITY_NOT_FOUND"),
        ("POST", "/v1/gateway-clients", {"fixmedins_code": "a b"}, 400, "VALIDATION_FAILED"),
        ("GET", "/v1/gateway-clients?fixmedins_code=a%20b", None, 400, "INVALID_QUERY"),
        ("PATCH", "/v1/gateway-clients/gwnosuch", {"status": "disabled"}, 404,
         "GATEWAY_CLIENT_NOT_FOUND"),
        ("PATCH", "/v1/gateway-clients/gwnosuch", {"status": "gone"}, 400, "VALIDATION_FAILED"),
    ],
)  # fmt: skip
async def test_client_admin_refusals(service: Service, method, path, body, status, code):
    got, answer = await service.admin(method, path, body)
    assert (got, answer["error"]["code"]) == (status, code)


# ------------------------------------------------------------------ authentication


async def test_sign_in_and_a_message_with_its_sign_no(service: Service):
    client = await gateway_client(service)
    assert re.fullmatch(r"[0-9a-f]{24}", client.sign_no)
    answer = await client.call("9001", SIGN_IN)
    assert answer.status == 200 and answer.infcode == 0
    out = answer.body["output"]["signinoutb"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", out["sign_time"])
    body = answer.body
    assert len(body["inf_refmsgid"]) == 30 and body["inf_refmsgid"][:6] == "320200"
    assert re.fullmatch(r"\d{17}", body["refmsg_time"])
    assert re.fullmatch(r"\d{17}", body["respond_time"])
    assert body["err_msg"] == "" and body["cainfo"] == "" and body["signtype"] == ""


async def _refused(client: GatewayClient, headers: dict[str, str], status: int, code: str):
    answer = await client.post(client.envelope("9001", SIGN_IN), headers)
    assert (answer.status, answer.code) == (status, code), answer.body
    assert answer.infcode == -1 and answer.body["output"] == {}
    assert answer.body["err_msg"].startswith(f"[{code}] ")
    assert re.fullmatch(r"000000\d{24}", answer.body["inf_refmsgid"])
    assert re.fullmatch(r"\d{17}", answer.body["respond_time"])
    return answer


async def test_wrong_signature_is_refused(service: Service):
    client = await register_client(service, (await service.facility())["fixmedins_code"])
    headers = tif_headers(client.paasid, client.secret + "x")
    await _refused(client, headers, 401, "SIGNATURE_INVALID")


async def test_unknown_client_is_refused(service: Service):
    client = await register_client(service, (await service.facility())["fixmedins_code"])
    await _refused(client, tif_headers("gwnosuch", client.secret), 401, "GATEWAY_CLIENT_UNKNOWN")


async def test_missing_headers_are_refused(service: Service):
    client = await register_client(service, (await service.facility())["fixmedins_code"])
    headers = client.headers()
    del headers["x-tif-signature"]
    await _refused(client, headers, 401, "SIGNATURE_MISSING")


# Well past the 300 s window: a busy machine may take seconds before the request is read.
@pytest.mark.parametrize("offset", [-330, 330])
async def test_stale_timestamp_is_refused(service: Service, offset: int):
    client = await register_client(service, (await service.facility())["fixmedins_code"])
    headers = client.headers(timestamp=int(time.time()) + offset)
    await _refused(client, headers, 401, "TIMESTAMP_OUT_OF_WINDOW")


@pytest.mark.parametrize("nonce", ["short", "x" * 65, "has a space in it!"])
async def test_malformed_nonce_is_refused(service: Service, nonce: str):
    client = await register_client(service, (await service.facility())["fixmedins_code"])
    await _refused(client, client.headers(nonce=nonce), 401, "NONCE_INVALID")


async def test_replayed_nonce_is_refused(service: Service):
    client = await register_client(service, (await service.facility())["fixmedins_code"])
    headers = client.headers()
    first = await client.post(client.envelope("9001", SIGN_IN), headers)
    assert first.infcode == 0
    # Captured headers with another body (the signature does not cover it): refused.
    await _refused(client, headers, 401, "NONCE_REPLAYED")


async def test_disabled_client_is_refused(service: Service):
    client = await gateway_client(service)
    await service.admin_ok("PATCH", f"/v1/gateway-clients/{client.paasid}", {"status": "disabled"})
    await _refused(client, client.headers(), 403, "GATEWAY_CLIENT_DISABLED")
    await service.admin_ok("PATCH", f"/v1/gateway-clients/{client.paasid}", {"status": "active"})
    assert (await client.call("9001", SIGN_IN)).infcode == 0


async def test_client_of_a_suspended_facility_is_refused(service: Service):
    client = await gateway_client(service)
    code = client.fixmedins_code
    await service.admin_ok("PATCH", f"/v1/facilities/{code}", {"status": "suspended"})
    await _refused(client, client.headers(), 403, "FACILITY_SUSPENDED")


async def test_not_an_envelope_is_refused_with_400(service: Service):
    client = await register_client(service, (await service.facility())["fixmedins_code"])
    for body in (b"not json", b"[1, 2]", b'{"msgid": "x"}', b'{"infno": 9001}'):
        answer = await client.post(body)
        assert (answer.status, answer.code) == (400, "ENVELOPE_INVALID"), body


async def test_a_body_too_large_is_refused(service: Service):
    client = await register_client(service, (await service.facility())["fixmedins_code"])
    body = io.BytesIO(b" " * (8 * 1024 * 1024 + 1))
    async with service.http.post(service.base_url + PATH, data=body, headers=client.headers()) as r:
        assert r.status == 413
        assert (await r.json())["err_msg"].startswith("[PAYLOAD_TOO_LARGE]")


# ------------------------------------------------------------------ the envelope


async def test_another_facilitys_code_is_refused(service: Service):
    client = await gateway_client(service)
    other = (await service.facility())["fixmedins_code"]
    answer = await client.call("9001", SIGN_IN, fixmedins_code=other)
    assert (answer.status, answer.infcode, answer.code) == (200, -1, "NOT_OWN_FACILITY")


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"msgid": ""}, "msgid is required"),
        ({"msgid": "x" * 31}, "msgid"),
        ({"msgid": 12}, "msgid"),
        ({"input": "text"}, "input"),
        ({"input": None}, "input is required"),
        ({"mdtrtarea_admvs": "32020"}, "mdtrtarea_admvs"),
        ({"opter": "o" * 31}, "opter"),
        ({"insuplc_admdvs": ""}, "insuplc_admdvs"),
    ],
)
async def test_malformed_envelope_fields_are_input_invalid(service: Service, fields, why):
    client = await gateway_client(service)
    inputs = {"signIn": {**SIGN_IN["signIn"], "psn_no": "3202000000000001"}}
    answer = await client.call("9001", inputs, **fields)
    assert (answer.status, answer.infcode, answer.code) == (200, -1, "INPUT_INVALID")
    assert why in answer.body["err_msg"]


async def test_missing_and_unknown_sign_no_are_refused(service: Service):
    client = await gateway_client(service)
    for sign_no in ("", "0" * 24, None):
        answer = await client.call("1101", _query("x"), sign_no=sign_no)
        assert (answer.status, answer.infcode, answer.code) == (200, -1, "SIGN_NO_INVALID")


async def test_expired_sign_no_is_refused(service: Service):
    client = await gateway_client(service)
    await _sql(
        service,
        "UPDATE gateway_signins SET expires_at = now() - interval '1 second' WHERE sign_no = $1",
        client.sign_no,
    )
    answer = await client.call("1101", _query("x"))
    assert answer.code == "SIGN_NO_INVALID"


async def test_another_facilitys_sign_no_is_refused(service: Service):
    client, other = await gateway_client(service), await gateway_client(service)
    answer = await client.call("1101", _query("x"), sign_no=other.sign_no)
    assert answer.code == "SIGN_NO_INVALID"


async def test_sign_out_ends_the_sign_no(service: Service):
    client = await gateway_client(service)
    out = await client.ok("9002", {"signOut": {"sign_no": client.sign_no, "opter_no": "OP001"}})
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", out["signoutoutb"]["sign_time"])
    assert (await client.call("1101", _query("x"))).code == "SIGN_NO_INVALID"
    # 9001 needs none: sign in again.
    await client.sign_in()
    bad = await client.call("9002", {"signOut": {"sign_no": "nosuch", "opter_no": "OP001"}})
    assert bad.code == "SIGN_NO_INVALID"
    conn = await asyncpg.connect(service.database_url)
    try:
        rows = await conn.fetch(
            "SELECT actor, action, data FROM audit_log"
            " WHERE object_type = 'facility' AND object_id = $1 AND action LIKE 'gateway.%'"
            " ORDER BY at",
            client.fixmedins_code,
        )
    finally:
        await conn.close()
    assert [r["action"] for r in rows] == [
        "gateway.signed_in",
        "gateway.signed_out",
        "gateway.signed_in",
    ]
    assert {r["actor"] for r in rows} == {f"gateway:{client.paasid}"}
    data = msgspec.json.decode(rows[1]["data"])
    assert (data["opter"], data["opter_name"], data["infno"]) == ("OP001", "测试操作员", "9002")


async def test_a_second_sign_out_answers_the_first_time(service: Service):
    client = await gateway_client(service)
    sign_no = client.sign_no
    first = await client.ok("9002", {"signOut": {"sign_no": sign_no, "opter_no": "OP001"}})
    await client.sign_in()
    again = await client.ok("9002", {"signOut": {"sign_no": sign_no, "opter_no": "OP001"}})
    assert again == first


async def test_unknown_infno_is_unsupported(service: Service):
    client = await gateway_client(service)
    answer = await client.call("9999", {"data": {}})
    assert (answer.status, answer.infcode, answer.code) == (200, -1, "UNSUPPORTED_INFNO")


async def test_a_malformed_input_node_is_input_invalid(service: Service):
    client = await gateway_client(service)
    for inputs in ({}, {"data": []}, {"data": {"mdtrt_cert_type": 2}}):
        answer = await client.call("1101", inputs)
        assert (answer.infcode, answer.code) == (-1, "INPUT_INVALID"), inputs


# ------------------------------------------------------------------ exactly once per msgid


async def test_same_msgid_same_body_gets_the_stored_answer(service: Service):
    client = await gateway_client(service)
    envelope = client.envelope("9001", SIGN_IN)
    first = await client.post(envelope)
    # The same message again, keys in another order, with new headers: the same bytes.
    again = await client.post(
        msgspec.json.encode(dict(reversed(list(envelope.items())))), client.headers()
    )
    assert first.infcode == 0 and again.raw == first.raw


async def test_a_stored_refusal_is_answered_again(service: Service):
    client = await gateway_client(service)
    envelope = client.envelope("1101", _query("110101199001011234"))
    first = await client.post(envelope)
    assert first.infcode == -1
    again = await client.post(envelope, client.headers())
    assert again.raw == first.raw


async def test_reused_msgid_with_another_body_is_refused(service: Service):
    client = await gateway_client(service)
    envelope = client.envelope("9001", SIGN_IN)
    assert (await client.post(envelope)).infcode == 0
    other = {**envelope, "input": {"signIn": {"opter_no": "OP002", "mac": "", "ip": ""}}}
    answer = await client.post(other, client.headers())
    assert (answer.status, answer.infcode, answer.code) == (200, -1, "MSGID_REUSED")
    other_infno = {**envelope, "infno": "1101", "input": _query("x")}
    assert (await client.post(other_infno, client.headers())).code == "MSGID_REUSED"


async def test_msgids_are_per_facility(service: Service):
    one, two = await gateway_client(service), await gateway_client(service)
    msgid = "SHARED" + str(time.time_ns())[-20:]
    a = await one.call("9001", SIGN_IN, msgid=msgid)
    b = await two.call("9001", SIGN_IN, msgid=msgid)
    assert a.infcode == b.infcode == 0
    assert a.body["output"] != b.body["output"]


async def test_concurrent_twins_get_one_answer(service: Service):
    """Tries of one message at once: one runs; each other gets its answer, or (while it
    runs) MSGID_IN_PROGRESS, and its answer when sent again."""
    client = await gateway_client(service)
    envelope = client.envelope("9001", SIGN_IN)
    answers = await asyncio.gather(*(client.post(envelope, client.headers()) for _ in range(4)))
    done = [a for a in answers if a.infcode == 0]
    assert done and {a.raw for a in done} == {done[0].raw}
    assert all(a.code == "MSGID_IN_PROGRESS" for a in answers if a.infcode != 0)
    assert (await client.post(envelope, client.headers())).raw == done[0].raw


# ------------------------------------------------------------------ 1101


async def test_1101_with_an_identity_number(service: Service):
    client = await gateway_client(service)
    person = await service.person(insutypes=("310", "510"))
    out = await client.ok("1101", _query(person["certno_full"]))
    base = out["baseinfo"]
    assert base["psn_no"] == person["psn_no"]
    assert base["certno"] == person["certno"] and "*" in base["certno"]
    assert base["brdy"] == str(person["birth_year"])
    full = person["certno_full"]
    assert full[6:14] not in str(out) and full not in str(out)  # no birth date anywhere
    assert {i["insutype"] for i in out["insuinfo"]} == {"310", "510"}
    assert all(i["psn_insu_stas"] == "1" for i in out["insuinfo"])
    assert out["idetinfo"] == []


async def test_1101_balance_is_in_yuan(service: Service):
    from tests.support.api import credit

    client = await gateway_client(service)
    person, card, his = await _card_and_his(service, client.fixmedins_code)
    await credit(service, person["psn_no"], 12345)
    token = (await authenticate_card(his, card, "identify"))["card_token"]
    answer = await client.call("1101", _query(card_cert(card.card_no, token), "03"))
    assert answer.body["output"]["insuinfo"][0]["balc"] == Decimal("123.45")
    assert b'"balc":123.45,' in answer.raw  # a JSON number


async def test_1101_refusals(service: Service):
    client = await gateway_client(service)
    cases = [
        (_query("110101199001011234", "01"), "CERT_TYPE_NOT_ALLOWED"),
        (_query("110101199001011234", "04"), "CERT_TYPE_NOT_ALLOWED"),
        (_query("12345"), "INVALID_CERTNO"),
        (_query("A00000001", "03"), "INPUT_INVALID"),
        (_query("A00000001|not-a-token", "03"), "CARD_TOKEN_INVALID"),
    ]
    for inputs, code in cases:
        answer = await client.call("1101", inputs)
        assert (answer.infcode, answer.code) == (-1, code), inputs


async def test_1101_of_an_unknown_identity_number(service: Service):
    from tests.support.api import make_certno

    client = await gateway_client(service)
    answer = await client.call("1101", _query(make_certno()))
    assert answer.code == "PERSON_NOT_FOUND"


async def test_1101_by_identity_number_masks_the_name_and_shows_no_balance(service: Service):
    """An identity number proves knowing it, not the person's presence: its 1101 answers
    what registering needs (psn_no, schemes, region), the name masked, no balance. The card
    gets the whole answer."""
    from tests.support.api import credit

    client = await gateway_client(service)
    person, card, his = await _card_and_his(service, client.fixmedins_code)
    await credit(service, person["psn_no"], 12345)
    by_number = await client.ok("1101", _query(person["certno_full"]))
    name = by_number["baseinfo"]["psn_name"]
    assert name != person["psn_name"] and name == person["psn_name"][0] + "*" * (
        len(person["psn_name"]) - 1
    )
    assert by_number["baseinfo"]["psn_no"] == person["psn_no"]
    assert [i["insutype"] for i in by_number["insuinfo"]] == ["310"]
    assert all("balc" not in i for i in by_number["insuinfo"])
    token = (await authenticate_card(his, card, "identify"))["card_token"]
    by_card = await client.ok("1101", _query(card_cert(card.card_no, token), "03"))
    assert by_card["baseinfo"]["psn_name"] == person["psn_name"]
    assert by_card["insuinfo"][0]["balc"] == Decimal("123.45")


async def test_1101_misses_by_identity_number_are_limited_per_client_and_day(service: Service):
    """Trying candidate identity numbers one after the other: the lookups that find nobody
    are counted per client and business day, exactly (concurrent ones too); past the limit
    every lookup by identity number of that client is refused, found or not, until the next
    day. The card, and other clients, are not affected."""
    from tests.support.api import make_certno

    client = await gateway_client(service)
    person, card, his = await _card_and_his(service, client.fixmedins_code)
    limit = 50  # CARDSVC_GATEWAY_CERTNO_MISSES_PER_DAY's default
    answers = await asyncio.gather(
        *(client.call("1101", _query(make_certno())) for _ in range(limit + 10))
    )
    codes = [a.code for a in answers]
    assert codes.count("PERSON_NOT_FOUND") == limit, codes
    assert codes.count("CERTNO_LOOKUP_LIMIT") == 10, codes
    refused = await client.call("1101", _query(person["certno_full"]))
    assert (refused.infcode, refused.code) == (-1, "CERTNO_LOOKUP_LIMIT"), refused.body
    assert "tomorrow" in refused.body["err_msg"]
    # The same message again tomorrow is not answered from a stored refusal.
    assert refused.status == 200
    # Neither the card nor another client shares the limit.
    token = (await authenticate_card(his, card, "identify"))["card_token"]
    assert (await client.call("1101", _query(card_cert(card.card_no, token), "03"))).infcode == 0
    other = await gateway_client(service, client.fixmedins_code)
    assert (await other.ok("1101", _query(person["certno_full"])))["baseinfo"]["psn_no"] == (
        person["psn_no"]
    )
    resp = await service.http.get(service.base_url + "/metrics")
    text = await resp.text()
    assert re.search(r'cardsvc_gateway_certno_lookups_total\{outcome="refused"\} [1-9]', text)
    # The next business day starts from zero.
    await _sql(
        service,
        "UPDATE gateway_certno_misses SET business_date = business_date - 1 WHERE paasid = $1",
        client.paasid,
    )
    again = await client.ok("1101", _query(person["certno_full"]))
    assert again["baseinfo"]["psn_no"] == person["psn_no"]


async def test_every_1101_is_audited_with_its_operator(service: Service):
    from tests.support.api import make_certno

    client = await gateway_client(service)
    person, card, his = await _card_and_his(service, client.fixmedins_code)
    await client.ok("1101", _query(person["certno_full"]))
    unknown = make_certno()
    assert (await client.call("1101", _query(unknown))).code == "PERSON_NOT_FOUND"
    token = (await authenticate_card(his, card, "identify"))["card_token"]
    await client.ok("1101", _query(card_cert(card.card_no, token), "03"))
    conn = await asyncpg.connect(service.database_url)
    try:
        rows = await conn.fetch(
            "SELECT object_type, object_id, data FROM audit_log"
            " WHERE actor = $1 AND action = 'gateway.person_queried' ORDER BY at",
            f"gateway:{client.paasid}",
        )
    finally:
        await conn.close()
    entries = [(r["object_type"], r["object_id"], msgspec.json.decode(r["data"])) for r in rows]
    assert [(t, o, d["mdtrt_cert_type"], d["outcome"]) for t, o, d in entries] == [
        ("person", person["psn_no"], "02", "ok"),
        ("gateway_client", client.paasid, "02", "PERSON_NOT_FOUND"),
        ("person", person["psn_no"], "03", "ok"),
    ]
    assert all(d["opter"] == "OP001" and d["opter_name"] and d["msgid"] for _, _, d in entries)
    assert entries[2][2]["card_no"] == card.card_no
    text = " ".join(r["data"] for r in rows)
    assert person["certno_full"] not in text and unknown not in text and token not in text


async def _card_and_his(service: Service, facility: str):
    counter = await service.terminal("counter")
    person = await service.person()
    card = await issue_card(counter, person["psn_no"])
    his = await service.terminal("his", facility)
    return person, card, his


async def test_1101_with_the_card_of_a_terminal_of_the_same_facility(service: Service):
    client = await gateway_client(service)
    person, card, his = await _card_and_his(service, client.fixmedins_code)
    for purpose in ("identify", "transaction"):
        token = (await authenticate_card(his, card, purpose))["card_token"]
        inputs = _query(card_cert(card.card_no, token), "03")
        inputs["data"]["card_sn"] = card.card_sn  # type: ignore[index]
        out = await client.ok("1101", inputs)
        assert out["baseinfo"]["psn_no"] == person["psn_no"]


async def test_1101_with_a_token_of_another_facility_is_refused(service: Service):
    client = await gateway_client(service)
    other = (await service.facility())["fixmedins_code"]
    _, card, his = await _card_and_his(service, other)
    token = (await authenticate_card(his, card, "identify"))["card_token"]
    answer = await client.call("1101", _query(card_cert(card.card_no, token), "03"))
    assert (answer.infcode, answer.code) == (-1, "CARD_TOKEN_INVALID")
    assert "another facility" in answer.body["err_msg"]


async def test_1101_with_a_counters_token_is_refused(service: Service):
    client = await gateway_client(service)
    counter = await service.terminal("counter")
    card = await issue_card(counter, (await service.person())["psn_no"])
    token = (await authenticate_card(counter, card, "identify"))["card_token"]
    answer = await client.call("1101", _query(card_cert(card.card_no, token), "03"))
    assert answer.code == "CARD_TOKEN_INVALID"


async def test_1101_with_a_lost_card_names_nobody(service: Service):
    client = await gateway_client(service)
    _, card, his = await _card_and_his(service, client.fixmedins_code)
    counter = await service.terminal("counter")
    await counter.call("POST", f"/v1/cards/{card.card_no}/report-loss")
    token = (await authenticate_card(his, card, "identify"))["card_token"]  # still allowed
    answer = await client.call("1101", _query(card_cert(card.card_no, token), "03"))
    assert (answer.infcode, answer.code) == (-1, "CARD_NOT_ACTIVE")


async def test_1101_with_a_mismatched_card_is_refused(service: Service):
    client = await gateway_client(service)
    _, card, his = await _card_and_his(service, client.fixmedins_code)
    _, other_card, _ = await _card_and_his(service, client.fixmedins_code)
    token = (await authenticate_card(his, card, "identify"))["card_token"]
    wrong_no = await client.call("1101", _query(card_cert(other_card.card_no, token), "03"))
    assert wrong_no.code == "CARD_MISMATCH"
    inputs = _query(card_cert(card.card_no, token), "03")
    inputs["data"]["card_sn"] = other_card.card_sn  # type: ignore[index]
    wrong_sn = await client.call("1101", inputs)
    assert wrong_sn.code == "CARD_MISMATCH"


# ------------------------------------------------------------------ the route's declaration


async def test_a_terminal_signature_or_the_admin_token_does_not_reach_the_gateway(
    service: Service,
):
    status, body = await service.admin("POST", PATH, {"infno": "9001"})
    assert status == 401 and body["err_msg"].startswith("[SIGNATURE_MISSING]")


# ------------------------------------------------------------------ what is stored, what not


@pytest.fixture
def flaky_transaction():
    """A transaction of this test only: each run pops its next behaviour."""
    from cardsvc.national.registry import TRANSACTIONS, transaction

    behaviours: list[object] = []
    runs: list[str] = []

    @transaction(FLAKY)
    async def flaky(call, inputs):
        runs.append(call.msgid)
        behaviour = behaviours.pop(0)
        if isinstance(behaviour, BaseException):
            raise behaviour
        return {"data": {"n": len(runs)}}

    yield behaviours, runs
    del TRANSACTIONS[FLAKY]


FLAKY = "X9901"


async def test_a_dependency_failure_is_not_stored(service: Service, flaky_transaction):
    from cardsvc.db import DatabaseUnavailable

    behaviours, runs = flaky_transaction
    behaviours.extend([DatabaseUnavailable("down"), "ok"])
    client = await gateway_client(service)
    envelope = client.envelope(FLAKY, {"data": {}})
    first = await client.post(envelope)
    assert (first.status, first.infcode, first.code) == (200, -1, "DATABASE_UNAVAILABLE")
    again = await client.post(envelope, client.headers())
    assert again.infcode == 0 and again.body["output"] == {"data": {"n": 2}}
    third = await client.post(envelope, client.headers())
    assert third.raw == again.raw and len(runs) == 2


async def test_an_unexpected_error_is_an_envelope_not_a_500(service: Service, flaky_transaction):
    behaviours, _ = flaky_transaction
    behaviours.extend([RuntimeError("bug"), "ok"])
    client = await gateway_client(service)
    envelope = client.envelope(FLAKY, {"data": {}})
    first = await client.post(envelope)
    assert (first.status, first.infcode, first.code) == (200, -1, "INTERNAL")
    assert "bug" not in first.body["err_msg"]
    assert (await client.post(envelope, client.headers())).infcode == 0


async def test_a_business_refusal_is_stored(service: Service, flaky_transaction):
    from cardsvc.errors import BusinessRuleViolation

    behaviours, runs = flaky_transaction
    behaviours.extend([BusinessRuleViolation("no", code="SOME_RULE"), "ok"])
    client = await gateway_client(service)
    envelope = client.envelope(FLAKY, {"data": {}})
    first = await client.post(envelope)
    assert (first.infcode, first.code) == (-1, "SOME_RULE")
    again = await client.post(envelope, client.headers())
    assert again.raw == first.raw and runs == [envelope["msgid"]]


# ------------------------------------------------------------------ group commit


async def test_admissions_and_answers_in_one_batch(service: Service):
    from cardsvc.national import messages

    one, two = await gateway_client(service), await gateway_client(service)
    pool = await asyncpg.create_pool(service.database_url, min_size=1, max_size=2)
    try:
        signed = await messages.admit_batch(
            pool,
            [
                messages.Admission(one.paasid, "n" * 20, one.sign_no, "B1"),
                messages.Admission(two.paasid, "n" * 20, "nosuch", "B1"),
                messages.Admission(one.paasid, "m" * 20, two.sign_no, "B2"),
            ],
        )
        assert [(a.signed_in, a.stored) for a in signed] == [  # type: ignore[union-attr]
            (True, None),
            (False, None),
            (False, None),  # another facility's sign_no
        ]
        again = await messages.admit_batch(
            pool,
            [
                messages.Admission(one.paasid, "n" * 20, one.sign_no, "B1"),
                messages.Admission(one.paasid, "k" * 20, one.sign_no, "B1"),
            ],
        )
        assert isinstance(again[0], CardsvcError) and again[0].code == "NONCE_REPLAYED"

        def answer(client: GatewayClient, msgid: str, body: bytes) -> messages.NewAnswer:
            return messages.NewAnswer(
                client.fixmedins_code, msgid, "9001", b"h", client.paasid, "r", 0,
                "application/json", body,
            )  # fmt: skip

        stored = await messages.store_batch(
            pool, [answer(one, "B1", b"first"), answer(two, "B1", b"other")]
        )
        assert stored == [None, None]
        twins = await messages.store_batch(
            pool, [answer(one, "B1", b"second"), answer(one, "B3", b"third")]
        )
        assert isinstance(twins[0], messages.Stored) and twins[0].answer == b"first"
        assert twins[1] is None
        replay = await messages.admit_batch(
            pool,
            [
                messages.Admission(one.paasid, "j" * 20, one.sign_no, "B1"),
                messages.Admission(two.paasid, "j" * 20, two.sign_no, "B1"),
            ],
        )
        assert [r.stored.answer for r in replay] == [b"first", b"other"]  # type: ignore[union-attr]
        assert replay[0].sequence != replay[1].sequence  # type: ignore[union-attr]
    finally:
        await pool.close()


async def test_many_messages_at_once(service: Service):
    client = await gateway_client(service)
    envelopes = [client.envelope("9001", SIGN_IN) for _ in range(30)]
    answers = await asyncio.gather(*(client.post(e, client.headers()) for e in envelopes))
    assert all(a.infcode == 0 for a in answers)
    assert len({a.body["inf_refmsgid"] for a in answers}) == 30
    again = await asyncio.gather(*(client.post(e, client.headers()) for e in envelopes))
    assert [a.raw for a in again] == [a.raw for a in answers]
