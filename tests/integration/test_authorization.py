"""Who may call what: every route × every kind of caller, against a table written from
DESIGN.md ("Who calls it"), not read off the code. A route missing from the table fails.

A caller that is let through gets whatever the operation answers to an empty or dummy
request (400, 404, 422 ...); one that is not gets the authentication or authorisation
refusal. Unsigned requests, expired sessions and replayed nonces are refused everywhere a
terminal is required."""

from __future__ import annotations

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from cardsvc.app import create_app
from cardsvc.terminal_sdk.client import TerminalClient
from tests.support.api import Service

session_loop = pytest.mark.asyncio(loop_scope="session")

ADMIN, COUNTER, POS, HIS, KIOSK, PUBLIC = "admin", "counter", "pos", "his", "kiosk", "public"
TERMINALS = (COUNTER, POS, HIS, KIOSK)

SETL = "S20260101" + "0" * 20
ACCESS = {
    ("GET", "/healthz"): {PUBLIC},
    ("GET", "/readyz"): {PUBLIC},
    ("GET", "/metrics"): {PUBLIC},
    ("GET", "/openapi.yaml"): {PUBLIC},
    ("GET", "/docs"): {PUBLIC},
    ("GET", "/docs/swagger-ui.css"): {PUBLIC},
    ("POST", "/v1/persons"): {ADMIN},
    ("GET", "/v1/persons/3202000000000001"): {ADMIN},
    ("POST", "/v1/persons/3202000000000001/insurances"): {ADMIN},
    ("POST", "/v1/accounts/credits"): {ADMIN},
    ("POST", "/v1/facilities"): {ADMIN},
    ("GET", "/v1/facilities/H1"): {ADMIN},
    ("PATCH", "/v1/facilities/H1"): {ADMIN},
    ("POST", "/v1/terminals"): {ADMIN},
    ("PATCH", "/v1/terminals/T00000000"): {ADMIN},
    ("PUT", "/v1/catalog/items"): {ADMIN},
    ("POST", "/v1/injury-cases"): {ADMIN},
    ("GET", "/v1/audit/verify"): {ADMIN},
    ("POST", "/v1/audit/anchors"): {ADMIN},
    ("GET", "/v1/ledger/proof"): {ADMIN},
    ("GET", "/v1/supervision/flags"): {ADMIN},
    ("GET", "/v1/reviews"): {ADMIN},
    ("POST", f"/v1/reviews/{SETL}/approve"): {ADMIN},
    ("POST", f"/v1/reviews/{SETL}/reject"): {ADMIN},
    ("GET", "/v1/reports/funds"): {ADMIN},
    ("POST", "/v1/clearing/runs"): {ADMIN},
    ("GET", "/v1/clearing/runs/2000-01-01"): {ADMIN},
    ("GET", "/v1/clearing/runs/2000-01-01/files/H1"): {ADMIN},
    ("POST", "/v1/terminals/sign-in"): {PUBLIC},
    ("POST", "/v1/terminals/sign-in/complete"): {PUBLIC},
    ("POST", "/v1/cards"): {COUNTER},
    ("GET", "/v1/cards/A00000000"): {COUNTER},
    ("POST", "/v1/cards/A00000000/replace"): {COUNTER},
    ("POST", "/v1/cards/A00000000/activate"): {COUNTER},
    ("POST", "/v1/cards/A00000000/report-loss"): {COUNTER},
    ("POST", "/v1/cards/A00000000/cancel-loss"): {COUNTER},
    ("POST", "/v1/cards/A00000000/cancel"): {COUNTER},
    ("POST", "/v1/card-auth/challenge"): set(TERMINALS),
    ("POST", "/v1/card-auth/verify"): set(TERMINALS),
    ("POST", "/v1/settlements/preview"): {POS, HIS},
    ("POST", "/v1/settlements"): {POS, HIS},
    ("GET", f"/v1/settlements/{SETL}"): {ADMIN, POS, HIS},
    ("POST", f"/v1/settlements/{SETL}/reverse"): {POS, HIS},
    ("POST", f"/v1/settlements/{SETL}/admin-reversal"): {ADMIN},
    ("POST", "/v1/reconciliation"): {POS, HIS},
    ("POST", "/v1/reconciliation/detail"): {POS, HIS},
    ("POST", "/v1/kiosk/summary"): {KIOSK},
    ("POST", "/v1/kiosk/report-loss"): {KIOSK},
}

REFUSALS = {"ADMIN_TOKEN_MISSING", "SIGNATURE_MISSING", "TERMINAL_KIND_NOT_ALLOWED"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def callers(service: Service) -> dict[str, TerminalClient]:
    facility = await service.facility()
    return {
        COUNTER: await service.terminal("counter"),
        POS: await service.terminal("pos", facility["fixmedins_code"]),
        HIS: await service.terminal("his", facility["fixmedins_code"]),
        KIOSK: await service.terminal("kiosk"),
    }


def _concrete_routes(settings) -> set[tuple[str, str]]:
    app = create_app(settings)
    templates = set()
    for route in app.router.routes():
        if route.method != "HEAD":
            templates.add((route.method, route.resource.canonical))
    return templates


def test_the_table_covers_every_route(settings):
    import re

    def template(path: str) -> str:
        return re.sub(
            r"/(3202\d{12}|H1|T\d{8}|A\d{8}|S\d{28}|2000-01-01|swagger-ui\.css)(?=/|$)",
            "/{x}",
            path,
        )

    documented = {(m, template(p)) for m, p in ACCESS}
    routes = {
        (m, re.sub(r"\{[^}]+\}", "{x}", p).replace("{x}/{x}", "{x}/{x}"))
        for m, p in _concrete_routes(settings)
    }
    # Alternation routes stand for several concrete paths in the table.
    expanded = set()
    for m, p in routes:
        if m == "POST" and p == "/v1/cards/{x}/{x}":
            expanded |= {
                (m, f"/v1/cards/{{x}}/{a}")
                for a in ("activate", "report-loss", "cancel-loss", "cancel")
            }
        elif m == "POST" and p == "/v1/reviews/{x}/{x}":
            expanded |= {(m, f"/v1/reviews/{{x}}/{a}") for a in ("approve", "reject")}
        else:
            expanded.add((m, p))
    assert expanded == documented


async def _call(service: Service, callers, who: str, method: str, path: str):
    body = b"{}" if method in {"POST", "PUT", "PATCH"} else b""
    if who in (ADMIN, PUBLIC):
        headers = {"Authorization": f"Bearer {service.admin_token}"} if who == ADMIN else {}
        if body:
            headers["Content-Type"] = "application/json"
        async with service.http.request(
            method, service.base_url + path, data=body, headers=headers
        ) as resp:
            raw = await resp.read()
            return resp.status, raw
    client = callers[who]
    resp = await client.send(method, path, body, client.signed_headers(method, path, body))
    return resp.status, msgspec.json.encode(resp.body)


@session_loop
@pytest.mark.parametrize(("method", "path"), sorted(ACCESS))
async def test_who_may_call(service: Service, callers, method: str, path: str):
    allowed = ACCESS[(method, path)]
    for who in (ADMIN, PUBLIC, *TERMINALS):
        status, raw = await _call(service, callers, who, method, path)
        body = msgspec.json.decode(raw) if raw and raw[:1] == b"{" else {}
        code = body.get("error", {}).get("code") if isinstance(body, dict) else None
        passes = PUBLIC in allowed or who in allowed
        if passes:
            assert code not in REFUSALS and status not in (401,), (who, method, path, status, code)
        else:
            assert status in (401, 403) and code in REFUSALS, (who, method, path, status, code)


async def _expired_session(service: Service) -> TerminalClient:
    client = await service.terminal("pos", (await service.facility())["fixmedins_code"])
    conn = await asyncpg.connect(service.database_url)
    try:
        await conn.execute(
            "UPDATE terminal_sessions SET expires_at = now() - interval '1 hour'"
            " WHERE session_id = $1",
            client.session_id,
        )
    finally:
        await conn.close()
    return client


@session_loop
@pytest.mark.parametrize(
    ("method", "path"), sorted(k for k, v in ACCESS.items() if v & set(TERMINALS))
)
async def test_unsigned_expired_and_replayed_are_refused(service: Service, callers, method, path):
    body = b"{}" if method in {"POST", "PUT", "PATCH"} else b""
    pos = callers[POS]
    unsigned = await pos.send(method, path, body)
    assert unsigned.status == 401 and unsigned.body["error"]["code"] == "SIGNATURE_MISSING"
    expired = await _expired_session(service)
    resp = await expired.send(method, path, body, expired.signed_headers(method, path, body))
    assert resp.status == 401 and resp.body["error"]["code"] == "SESSION_EXPIRED"
    headers = pos.signed_headers(method, path, body)
    await pos.send(method, path, body, headers)
    replay = await pos.send(method, path, body, headers)
    assert replay.status == 401 and replay.body["error"]["code"] == "NONCE_REPLAYED"
