"""Terminal sign-in, signed requests and authorisation by terminal kind and facility."""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import msgspec
import pytest
from aiohttp import web

from cardcrypto import profile
from cardsvc.app import create_app
from cardsvc.config import Settings
from cardsvc.terminal_sdk.client import TerminalClient, TerminalError
from tests.conftest import free_port
from tests.support.api import Service

pytestmark = pytest.mark.asyncio(loop_scope="session")

BODY = msgspec.json.encode({"card_no": "A00000000", "purpose": "identify"})
PATH = "/v1/card-auth/challenge"


def _code(resp) -> str:
    return resp.body["error"]["code"]


async def test_sign_in_verifies_both_sides(service: Service):
    counter = await service.terminal("counter")
    assert counter.session_id


async def test_sign_in_with_wrong_cryptogram_is_refused(service: Service):
    reg = await service.admin_ok("POST", "/v1/terminals", {"kind": "counter"})
    impostor = TerminalClient(service.http, service.base_url, reg["terminal_id"], os.urandom(16))
    with pytest.raises(Exception) as caught:
        await impostor.sign_in()
    assert getattr(caught.value, "code", None) == "CRYPTOGRAM_INVALID"


async def test_sign_in_challenge_is_single_use(service: Service):
    reg = await service.admin_ok("POST", "/v1/terminals", {"kind": "kiosk"})
    key = bytes.fromhex(reg["terminal_key"])
    client = TerminalClient(service.http, service.base_url, reg["terminal_id"], key)
    start = await client.send(
        "POST", "/v1/terminals/sign-in", msgspec.json.encode({"terminal_id": reg["terminal_id"]})
    )
    rs, rt = bytes.fromhex(start.body["challenge"]), os.urandom(16)
    complete = msgspec.json.encode(
        {
            "terminal_id": reg["terminal_id"],
            "challenge": rs.hex(),
            "terminal_random": rt.hex(),
            "cryptogram": profile.terminal_cryptogram(key, rs, rt).hex(),
        }
    )
    first = await client.send("POST", "/v1/terminals/sign-in/complete", complete)
    assert first.status == 200
    assert first.body["server_cryptogram"] == profile.server_cryptogram(key, rs, rt).hex()
    replay = await client.send("POST", "/v1/terminals/sign-in/complete", complete)
    assert replay.status == 401 and _code(replay) == "CHALLENGE_INVALID"


async def test_unknown_terminal_is_not_told_apart_but_cannot_sign_in(service: Service):
    client = TerminalClient(service.http, service.base_url, "T99999999", os.urandom(16))
    start = await client.send(
        "POST", "/v1/terminals/sign-in", msgspec.json.encode({"terminal_id": "T99999999"})
    )
    assert start.status == 200 and len(start.body["challenge"]) == 32
    with pytest.raises(TerminalError) as caught:
        await client.sign_in()
    assert caught.value.code == "CHALLENGE_INVALID"


async def test_disabled_terminal_is_refused_at_once_and_cannot_sign_in(service: Service):
    counter = await service.terminal("counter")
    await service.admin_ok("PATCH", f"/v1/terminals/{counter.terminal_id}", {"status": "disabled"})
    resp = await counter.request("POST", PATH, {"card_no": "A00000000", "purpose": "identify"})
    assert resp.status == 403 and _code(resp) == "TERMINAL_DISABLED"
    with pytest.raises(TerminalError) as caught:
        await counter.sign_in()
    assert caught.value.code == "CHALLENGE_INVALID"
    await service.admin_ok("PATCH", f"/v1/terminals/{counter.terminal_id}", {"status": "active"})
    await counter.sign_in()
    resp = await counter.request("POST", PATH, {"card_no": "A00000000", "purpose": "identify"})
    assert resp.status == 404
    status, body = await service.admin("PATCH", "/v1/terminals/T00000000", {"status": "active"})
    assert status == 404 and body["error"]["code"] == "TERMINAL_NOT_FOUND"


async def test_replayed_nonce_is_refused(service: Service):
    counter = await service.terminal("counter")
    headers = counter.signed_headers("POST", PATH, BODY)
    first = await counter.send("POST", PATH, BODY, headers)
    assert first.status == 404  # signed fine; the card does not exist
    again = await counter.send("POST", PATH, BODY, headers)
    assert again.status == 401 and _code(again) == "NONCE_REPLAYED"


# Well past the 300 s window: a busy machine may take seconds before the request is read.
@pytest.mark.parametrize("offset", [-330, 330])
async def test_stale_timestamp_is_refused(service: Service, offset: int):
    counter = await service.terminal("counter")
    headers = counter.signed_headers("POST", PATH, BODY, timestamp=int(time.time()) + offset)
    resp = await counter.send("POST", PATH, BODY, headers)
    assert resp.status == 401 and _code(resp) == "TIMESTAMP_OUT_OF_WINDOW"


async def test_tampered_body_is_refused(service: Service):
    counter = await service.terminal("counter")
    headers = counter.signed_headers("POST", PATH, BODY)
    tampered = BODY.replace(b"identify", b"transaction")
    resp = await counter.send("POST", PATH, tampered, headers)
    assert resp.status == 401 and _code(resp) == "SIGNATURE_INVALID"


async def test_tampered_path_and_query_are_refused(service: Service):
    counter = await service.terminal("counter")
    headers = counter.signed_headers("GET", "/v1/cards/A00000001", b"")
    resp = await counter.send("GET", "/v1/cards/A00000002", b"", headers)
    assert resp.status == 401 and _code(resp) == "SIGNATURE_INVALID"
    headers = counter.signed_headers("GET", "/v1/cards/A00000001?x=1", b"")
    resp = await counter.send("GET", "/v1/cards/A00000001?x=2", b"", headers)
    assert resp.status == 401 and _code(resp) == "SIGNATURE_INVALID"


@pytest.mark.parametrize(
    ("drop", "code"),
    [("X-Signature", "SIGNATURE_MISSING"), ("X-Nonce", "SIGNATURE_MISSING")],
)
async def test_missing_headers_are_refused(service: Service, drop: str, code: str):
    counter = await service.terminal("counter")
    headers = counter.signed_headers("POST", PATH, BODY)
    del headers[drop]
    resp = await counter.send("POST", PATH, BODY, headers)
    assert resp.status == 401 and _code(resp) == code


async def test_short_nonce_and_foreign_session_are_refused(service: Service):
    counter = await service.terminal("counter")
    other = await service.terminal("counter")
    resp = await counter.send(
        "POST", PATH, BODY, counter.signed_headers("POST", PATH, BODY, nonce="short")
    )
    assert resp.status == 401 and _code(resp) == "NONCE_INVALID"
    headers = counter.signed_headers("POST", PATH, BODY)
    headers["X-Session-Id"] = other.session_id or ""
    resp = await counter.send("POST", PATH, BODY, headers)
    assert resp.status == 401 and _code(resp) == "SESSION_INVALID"


async def test_pos_cannot_issue_cards(service: Service):
    facility = await service.facility()
    person = await service.person()
    pos = await service.terminal("pos", facility["fixmedins_code"])
    resp = await pos.request("POST", "/v1/cards", {"psn_no": person["psn_no"]})
    assert resp.status == 403 and _code(resp) == "TERMINAL_KIND_NOT_ALLOWED"


async def test_terminal_of_suspended_facility_is_refused(service: Service):
    facility = await service.facility()
    pos = await service.terminal("pos", facility["fixmedins_code"])
    code = facility["fixmedins_code"]
    await service.admin_ok("PATCH", f"/v1/facilities/{code}", {"status": "suspended"})
    resp = await pos.request("POST", PATH, {"card_no": "A00000000", "purpose": "identify"})
    assert resp.status == 403 and _code(resp) == "FACILITY_SUSPENDED"
    await service.admin_ok("PATCH", f"/v1/facilities/{code}", {"status": "active"})
    resp = await pos.request("POST", PATH, {"card_no": "A00000000", "purpose": "identify"})
    assert resp.status == 404


async def test_admin_endpoints_need_the_token(service: Service):
    async with service.http.get(service.base_url + "/v1/audit/verify") as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "OPERATOR_CREDENTIALS_MISSING"
    headers = {"Authorization": "Bearer not-the-token-at-all"}
    async with service.http.get(service.base_url + "/v1/audit/verify", headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "OPERATOR_TOKEN_INVALID"


async def test_terminals_cannot_call_admin_endpoints(service: Service):
    counter = await service.terminal("counter")
    resp = await counter.request("GET", "/v1/audit/verify")
    assert resp.status == 401 and _code(resp) == "OPERATOR_CREDENTIALS_MISSING"


async def test_expired_session_is_refused_and_the_sdk_signs_in_again(
    service: Service, settings: Settings
):
    short = msgspec.structs.replace(settings, session_ttl=1, port=free_port())
    runner = web.AppRunner(create_app(short))
    await runner.setup()
    await web.TCPSite(runner, short.host, short.port).start()
    try:
        reg = await service.admin_ok("POST", "/v1/terminals", {"kind": "counter"})
        base = f"http://{short.host}:{short.port}"
        async with aiohttp.ClientSession() as http:
            client = TerminalClient(
                http, base, reg["terminal_id"], bytes.fromhex(reg["terminal_key"])
            )
            await client.sign_in()
            first_session = client.session_id
            await asyncio.sleep(2.1)
            raw = await client.send("POST", PATH, BODY, client.signed_headers("POST", PATH, BODY))
            assert raw.status == 401 and _code(raw) == "SESSION_EXPIRED"
            resp = await client.request(
                "POST", PATH, {"card_no": "A00000000", "purpose": "identify"}
            )
            assert resp.status == 404  # signed in again by itself; the card is unknown
            assert client.session_id != first_session
    finally:
        await runner.cleanup()


async def test_flooding_terminal_is_limited_and_others_are_served(
    service: Service, settings: Settings
):
    limited = msgspec.structs.replace(
        settings, terminal_rate=5.0, terminal_burst=5.0, port=free_port()
    )
    runner = web.AppRunner(create_app(limited))
    await runner.setup()
    await web.TCPSite(runner, limited.host, limited.port).start()
    try:
        base = f"http://{limited.host}:{limited.port}"
        clients = []
        for _ in range(2):
            reg = await service.admin_ok("POST", "/v1/terminals", {"kind": "counter"})
            client = TerminalClient(
                service.http, base, reg["terminal_id"], bytes.fromhex(reg["terminal_key"])
            )
            await client.sign_in()
            clients.append(client)
        flood, quiet = clients
        body = {"card_no": "A00000000", "purpose": "identify"}
        results = await asyncio.gather(*[flood.request("POST", PATH, body) for _ in range(30)])
        statuses = [r.status for r in results]
        assert statuses.count(429) >= 20 and statuses.count(404) >= 5
        limited_resp = next(r for r in results if r.status == 429)
        assert limited_resp.body["error"]["code"] == "RATE_LIMITED"
        assert limited_resp.body["error"]["details"]["retry_after_ms"] > 0
        assert (await quiet.request("POST", PATH, body)).status == 404  # not starved
    finally:
        await runner.cleanup()
