"""Who may call what: every route of the app × every kind of caller, probed for real.

The callers: anyone, the bootstrap token, an operator of each role by API token (and, on a
sample of routes, by the console session cookie with and without its CSRF token), and each
kind of terminal.

Who may call a route is declared once, by the decorator on its handler (``cardsvc.web.auth``);
this test enumerates the app's routes, reads each declaration back, and checks the running
service does exactly that. A route without a declaration fails (the app refuses to build).
The declaration is also held to the design's general rules (``test_declarations_follow_*``).

A caller that is let through gets whatever the operation answers to an empty or dummy
request (400, 404, 422 ...); one that is not gets the authentication or authorisation
refusal. Unsigned requests, expired sessions and replayed nonces are refused everywhere a
terminal is required. Facility scoping (another facility's settlement: 403 NOT_OWN_FACILITY)
is tested in test_settlement.py, a suspended facility's terminal in test_terminal_auth.py."""

from __future__ import annotations

import re

import asyncpg
import msgspec
import pytest
import pytest_asyncio
from aiohttp import web

from cardsvc.app import create_app
from cardsvc.config import Settings
from cardsvc.operators.models import ROLES
from cardsvc.terminal_sdk.client import TerminalClient
from cardsvc.web.auth import declared_access, public, require_declared_access
from tests.support.api import Service
from tests.support.operators import TestOperator, create_operator

session_loop = pytest.mark.asyncio(loop_scope="session")

COUNTER, POS, HIS, KIOSK, PUBLIC = "counter", "pos", "his", "kiosk", "public"
BOOTSTRAP = "bootstrap"  # CARDSVC_ADMIN_TOKEN: an audience of no route
ADMINISTRATOR, CLERK, REVIEWER, AUDITOR = (f"op:{r}" for r in ROLES)
OPERATORS = (ADMINISTRATOR, CLERK, REVIEWER, AUDITOR)
SESSION = "op:session"  # the console session's own routes (cookie only)
GATEWAY = (
    "gateway"  # a national gateway client: TIF headers (tests/integration/test_gateway_core.py)
)
TERMINALS = (COUNTER, POS, HIS, KIOSK)

SETL = "S20260101" + "0" * 20
# A value for each path parameter that names one thing (alternatives such as
# {action:activate|cancel} are each probed); any other parameter gets DEFAULT_SAMPLE.
SAMPLES = {
    "psn_no": "3202000000000001",
    "fixmedins_code": "H1",
    "terminal_id": "T00000000",
    "card_no": "A00000000",
    "setl_id": SETL,
    "clearing_date": "2000-01-01",
    "asset": "swagger-ui.css",
    "paasid": "gw0000000000000000",
    "report_id": "R0000000000",
    "operator_id": "OP0000000000",
    "token_id": "OT0000000000",
}
DEFAULT_SAMPLE = "x1"
_GROUP = re.compile(r"\(\?P<(?P<name>\w+)>(?P<pattern>[^()]*)\)")
_ALTERNATIVES = re.compile(r"[\w-]+(?:\|[\w-]+)+")


def _concrete_paths(resource: web.AbstractResource) -> list[str]:
    """Paths that reach ``resource``: one per alternative of each parameter, else a sample."""
    info = resource.get_info()
    if "formatter" not in info:
        return [resource.canonical]
    pattern: re.Pattern[str] = info["pattern"]
    choices = {}
    for group in _GROUP.finditer(pattern.pattern):
        name, sub = group["name"], group["pattern"]
        choices[name] = (
            sub.split("|") if _ALTERNATIVES.fullmatch(sub) else [SAMPLES.get(name, DEFAULT_SAMPLE)]
        )
    paths = [""]
    for literal, name in re.findall(r"([^{]*)(?:\{(\w+)\})?", info["formatter"]):
        paths = [p + literal for p in paths]
        if name:
            paths = [p + value for p in paths for value in choices[name]]
    for path in paths:
        assert pattern.fullmatch(path), f"{info['formatter']}: give {path!r} a sample in SAMPLES"
    return paths


def _declared_routes() -> list[tuple[str, str, str, frozenset[str] | None]]:
    """(method, route, concrete path, who may call it) for every route of the app."""
    app = create_app(Settings(admin_token="a" * 16, data_key=b"\0" * 32))
    return [
        (route.method, route.resource.canonical, path, declared_access(route.handler))
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
        for path in _concrete_paths(route.resource)
    ]


ROUTES = _declared_routes()
ACCESS = {(method, path): access or frozenset() for method, _, path, access in ROUTES}
REFUSALS = {
    "OPERATOR_CREDENTIALS_MISSING",
    "BOOTSTRAP_TOKEN_REFUSED",
    "ROLE_NOT_ALLOWED",
    "SESSION_REQUIRED",
    "SIGNATURE_MISSING",
    "TERMINAL_KIND_NOT_ALLOWED",
}


def test_an_undeclared_route_is_refused():
    async def declared(request: web.Request) -> web.Response:
        return web.Response()

    async def undeclared(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/declared", public(declared))
    require_declared_access(app)
    app.router.add_post("/v1/undeclared/{x}", undeclared)
    with pytest.raises(RuntimeError, match=r"POST /v1/undeclared/\{x\}: .* declares no access"):
        require_declared_access(app)


def test_every_route_is_declared_and_probed():
    app = create_app(Settings(admin_token="a" * 16, data_key=b"\0" * 32))
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    assert {(method, route) for method, route, _, _ in ROUTES} == routes
    assert [(m, p) for m, _, p, access in ROUTES if access is None] == []
    assert len(ACCESS) == len(ROUTES)  # no two routes share a probe
    # Each alternative of a route is probed.
    assert {p for m, p in ACCESS if m == "POST" and p.startswith("/v1/reviews/")} == {
        f"/v1/reviews/{SETL}/approve",
        f"/v1/reviews/{SETL}/reject",
    }


def test_declarations_follow_the_design_rules():
    for (method, path), access in ACCESS.items():
        where = (method, path, sorted(access))
        assert access and access <= {PUBLIC, GATEWAY, SESSION, *OPERATORS, *TERMINALS}, where
        # The gateway stands alone, and is the national interface's one endpoint.
        assert GATEWAY not in access or access == {GATEWAY}, where
        assert (GATEWAY in access) == path.startswith("/fsi/"), where
        # Public stands alone: a route open to all is not also "for" someone.
        assert PUBLIC not in access or access == {PUBLIC}, where
        # Anyone may only read, or begin a terminal's or an operator's session (there is
        # none yet to sign with or to send).
        if PUBLIC in access:
            assert method == "GET" or re.match(
                r"/v1/(terminals/sign-in|operator-sessions$)", path
            ), where
        # An operator never acts as a terminal: a route for both is a read.
        if access & set(OPERATORS) and access & set(TERMINALS):
            assert method == "GET", where
        # Only the settling terminals settle, reverse or reconcile; the administrator reverses.
        if method == "POST" and re.match(r"/v1/(settlements|reconciliation)", path):
            assert access <= {POS, HIS} or access == {ADMINISTRATOR}, where
        # Operators, tokens and the session: the operator routes.
        if SESSION in access:
            assert access == {SESSION} and path.startswith("/v1/operator-sessions/current"), where
        # The auditor only reads.
        if AUDITOR in access and method != "GET":
            assert path in ("/v1/audit/anchors",) or "/tokens" in path, where


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def operators(service: Service) -> dict[str, TestOperator]:
    """An operator holding each one role, and one holding all four (for the cookie)."""
    made = {f"op:{role}": await create_operator(service.database_url, (role,)) for role in ROLES}
    made["all"] = await create_operator(service.database_url)
    return made


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def callers(service: Service) -> dict[str, TerminalClient]:
    facility = await service.facility()
    return {
        COUNTER: await service.terminal("counter"),
        POS: await service.terminal("pos", facility["fixmedins_code"]),
        HIS: await service.terminal("his", facility["fixmedins_code"]),
        KIOSK: await service.terminal("kiosk"),
    }


def _token(service: Service, operators, who: str) -> str | None:
    if who == BOOTSTRAP:
        return service.bootstrap_token
    return operators[who].token if who in OPERATORS else None


async def _call(service: Service, callers, operators, who: str, method: str, path: str):
    body = b"{}" if method in {"POST", "PUT", "PATCH"} else b""
    if who in (PUBLIC, BOOTSTRAP, *OPERATORS):
        token = _token(service, operators, who)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
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


def _code(body: object) -> str | None:
    """The error code of a refusal: ``error.code``, or the gateway envelope's
    ``err_msg`` "[CODE] message"."""
    if not isinstance(body, dict):
        return None
    if "err_msg" in body:
        err = str(body["err_msg"])
        return err[1 : err.index("]")] if err.startswith("[") else None
    code = body.get("error", {}).get("code")
    return str(code) if code is not None else None


@session_loop
@pytest.mark.parametrize(("method", "path"), sorted(ACCESS))
async def test_who_may_call(service: Service, callers, operators, method: str, path: str):
    allowed = ACCESS[(method, path)]
    for who in (PUBLIC, BOOTSTRAP, *OPERATORS, *TERMINALS):
        status, raw = await _call(service, callers, operators, who, method, path)
        body = msgspec.json.decode(raw) if raw and raw[:1] == b"{" else {}
        code = _code(body)
        passes = PUBLIC in allowed or who in allowed
        if passes:
            assert code not in REFUSALS and status not in (401,), (who, method, path, status, code)
        elif who == BOOTSTRAP and (method, path) == ("POST", "/v1/operators"):
            # Taken there only while no administrator exists; the test operators are.
            assert (status, code) == (401, "BOOTSTRAP_CLOSED"), (method, path, status, code)
        else:
            assert status in (401, 403) and code in REFUSALS, (who, method, path, status, code)
        if code == "ROLE_NOT_ALLOWED":
            roles = {f"op:{r}" for r in body["error"]["details"]["allowed"]}
            assert roles == allowed - set(TERMINALS), (who, method, path, roles)


# The console session on a sample of routes: every read, and writes of each area (not the
# session's own DELETE, which would end it).
COOKIE_SAMPLE = sorted(
    (m, p)
    for (m, p), access in ACCESS.items()
    if access & {*OPERATORS, SESSION}
    and (m == "GET" or p in ("/v1/persons", "/v1/facilities", "/v1/operators", "/v1/clearing/runs"))
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def console(service: Service, operators) -> tuple[str, str]:
    """A console session of the all-roles operator: (cookie value, CSRF token)."""
    everyone = operators["all"]
    async with service.http.post(
        service.base_url + "/v1/operator-sessions",
        json={"login": everyone.login, "password": everyone.password},
    ) as resp:
        assert resp.status == 201, await resp.text()
        return resp.cookies["cardsvc_session"].value, (await resp.json())["csrf_token"]


@session_loop
@pytest.mark.parametrize(("method", "path"), COOKIE_SAMPLE)
async def test_the_console_session_with_its_csrf_token(service: Service, console, method, path):
    cookie, csrf = console
    body = b"{}" if method != "GET" else b""
    headers = {"Cookie": f"cardsvc_session={cookie}", "Content-Type": "application/json"}
    url = service.base_url + path
    async with service.http.request(
        method, url, data=body, headers={**headers, "X-CSRF-Token": csrf}
    ) as resp:
        code = _code(await resp.json()) if resp.content_type == "application/json" else None
        assert resp.status != 401 and code not in REFUSALS, (method, path, resp.status, code)
    if method == "GET":
        # Another site's page may not read with the cookie either.
        evil = {**headers, "Origin": "https://elsewhere.example"}
        async with service.http.get(url, headers=evil) as resp:
            assert resp.status == 403 and _code(await resp.json()) == "CSRF_FAILED"
        return
    for refused in ({}, {"X-CSRF-Token": "x" * 43}, {"Origin": "https://elsewhere.example"}):
        extra = refused if "Origin" not in refused else {**refused, "X-CSRF-Token": csrf}
        async with service.http.request(
            method, url, data=body, headers={**headers, **extra}
        ) as resp:
            assert resp.status == 403 and _code(await resp.json()) == "CSRF_FAILED", refused


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
