"""Operators: sign-in and its throttling, console sessions (cookie, CSRF, idle and absolute
expiry), API tokens (shown once, revoked at once), disabling, the bootstrap token, and
audit entries naming the operator. Against the real service and PostgreSQL; expiry on a
second service with short session settings (and a database of its own, where no
administrator exists yet, for the bootstrap)."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
import pytest_asyncio
from aiohttp import web

from cardsvc import db
from cardsvc.app import create_app
from cardsvc.config import Settings
from cardsvc.devenv.pgcluster import LocalCluster
from tests.conftest import free_port
from tests.support.api import Service
from tests.support.operators import PASSWORD, TestOperator, create_operator

pytestmark = pytest.mark.asyncio(loop_scope="session")

STRONG = "a long and unusual passphrase 7"


async def _request(
    service: Service,
    method: str,
    path: str,
    *,
    json: Any = None,
    token: str | None = None,
    cookie: str | None = None,
    csrf: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if cookie is not None:
        sent["Cookie"] = f"cardsvc_session={cookie}"
    if csrf is not None:
        sent["X-CSRF-Token"] = csrf
    async with service.http.request(
        method, service.base_url + path, json=json, headers=sent
    ) as resp:
        raw = await resp.read()
        body = msgspec.json.decode(raw) if raw and raw[:1] == b"{" else None
        return resp.status, body, resp


async def _sign_in(service: Service, login: str, password: str) -> tuple[int, Any, str | None]:
    status, body, resp = await _request(
        service, "POST", "/v1/operator-sessions", json={"login": login, "password": password}
    )
    morsel = resp.cookies.get("cardsvc_session")
    return status, body, morsel.value if morsel is not None else None


def _code(body: Any) -> str | None:
    return body["error"]["code"] if isinstance(body, dict) and "error" in body else None


async def _forget_failures(service: Service) -> None:
    """Every test signs in from 127.0.0.1: leave no address lock behind for the others."""
    conn = await asyncpg.connect(service.database_url)
    try:
        await conn.execute("DELETE FROM operator_login_failures")
    finally:
        await conn.close()


@pytest_asyncio.fixture(loop_scope="session")
async def clerk(service: Service) -> AsyncIterator[TestOperator]:
    yield await create_operator(service.database_url, ("clerk",), name="柜员甲")
    await _forget_failures(service)


async def test_sign_in_gives_a_strict_http_only_cookie_and_a_csrf_token(
    service: Service, clerk: TestOperator
):
    status, body, resp = await _request(
        service,
        "POST",
        "/v1/operator-sessions",
        json={"login": clerk.login, "password": PASSWORD},
    )
    assert status == 201, body
    assert body["operator"] == {
        "operator_id": clerk.operator_id,
        "login": clerk.login,
        "display_name": "柜员甲",
        "roles": ["clerk"],
    }
    assert body["csrf_token"] and body["idle_expires_at"] <= body["expires_at"]
    header = resp.headers["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/" in header
    assert "Secure" not in header  # CARDSVC_COOKIE_SECURE is off for plain http
    cookie = resp.cookies["cardsvc_session"].value
    # The console learns who is signed in, and its CSRF token, on load.
    status, current, _ = await _request(
        service, "GET", "/v1/operator-sessions/current", cookie=cookie
    )
    assert status == 200 and current["operator"] == body["operator"]
    assert current["csrf_token"] == body["csrf_token"]
    # The cookie works on the clerk's routes, and only those.
    status, _, _ = await _request(service, "GET", "/v1/persons/1100009999999999", cookie=cookie)
    assert status == 404
    status, refused, _ = await _request(
        service, "POST", "/v1/facilities", json={}, cookie=cookie, csrf=body["csrf_token"]
    )
    assert status == 403 and _code(refused) == "ROLE_NOT_ALLOWED"
    assert refused["error"]["details"]["allowed"] == ["administrator"]
    # Signing out needs the CSRF token too, ends the session and clears the cookie.
    status, refused, _ = await _request(
        service, "DELETE", "/v1/operator-sessions/current", cookie=cookie
    )
    assert status == 403 and _code(refused) == "CSRF_FAILED"
    status, _, resp = await _request(
        service, "DELETE", "/v1/operator-sessions/current", cookie=cookie, csrf=body["csrf_token"]
    )
    assert status == 204 and 'cardsvc_session=""' in resp.headers["Set-Cookie"]
    status, gone, _ = await _request(service, "GET", "/v1/operator-sessions/current", cookie=cookie)
    assert status == 401 and _code(gone) == "SESSION_INVALID"


async def test_the_session_secret_and_csrf_token_are_not_stored(
    service: Service, clerk: TestOperator
):
    _, body, cookie = await _sign_in(service, clerk.login, PASSWORD)
    assert cookie is not None
    conn = await asyncpg.connect(service.database_url)
    try:
        rows = await conn.fetch(
            "SELECT * FROM operator_sessions WHERE operator_id = $1", clerk.operator_id
        )
        stored = repr([dict(r) for r in rows])
        tokens = repr([dict(r) for r in await conn.fetch("SELECT * FROM operator_tokens")])
    finally:
        await conn.close()
    assert rows and cookie not in stored and body["csrf_token"] not in stored
    assert clerk.token not in tokens


async def test_a_plain_form_post_with_the_cookie_is_refused(service: Service, clerk: TestOperator):
    _, _, cookie = await _sign_in(service, clerk.login, PASSWORD)
    async with service.http.post(
        service.base_url + "/v1/persons",
        data={"psn_name": "x"},  # what an HTML form on another site would send
        headers={"Cookie": f"cardsvc_session={cookie}"},
    ) as resp:
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "CSRF_FAILED"


async def test_every_sign_in_failure_is_the_same_answer(service: Service):
    disabled = await create_operator(service.database_url, ("clerk",))
    admin = await create_operator(service.database_url, ("administrator",))
    status, _, _ = await _request(
        service,
        "PATCH",
        f"/v1/operators/{disabled.operator_id}",
        json={"status": "disabled"},
        token=admin.token,
    )
    assert status == 200
    answers = []
    for login, password in (
        ("nobody-" + secrets.token_hex(4), PASSWORD),  # unknown login
        (disabled.login, "not the password at all"),  # wrong password
        (disabled.login, PASSWORD),  # right password, disabled operator
        ("NOT A LOGIN!", PASSWORD),  # not even a login's shape
    ):
        status, body, cookie = await _sign_in(service, login, password)
        answers.append((status, body["error"]["code"], body["error"]["message"], cookie))
    await _forget_failures(service)
    assert len(set(answers)) == 1, answers
    assert answers[0][:2] == (401, "LOGIN_FAILED") and answers[0][3] is None


async def test_sign_in_is_throttled_per_login_with_retry_after(
    service: Service, clerk: TestOperator
):
    try:
        for _ in range(5):  # the free failures
            status, body, _ = await _sign_in(service, clerk.login, "wrong password here")
            assert status == 401 and _code(body) == "LOGIN_FAILED"
        status, body, _ = await _sign_in(service, clerk.login, "wrong password here")
        assert status == 401  # the sixth counts, and locks the login
        status, body, resp = await _request(
            service,
            "POST",
            "/v1/operator-sessions",
            json={"login": clerk.login, "password": PASSWORD},
        )
        # Locked: even the right password is not tried.
        assert status == 429 and _code(body) == "LOGIN_THROTTLED"
        assert int(resp.headers["Retry-After"]) >= 1
        # Another operator from the same address is not locked out by this login.
        other = await create_operator(service.database_url, ("auditor",))
        assert (await _sign_in(service, other.login, PASSWORD))[0] == 201
        await asyncio.sleep(1.1)  # the first lock is one second; each next one doubles
        assert (await _sign_in(service, clerk.login, PASSWORD))[0] == 201
    finally:
        await _forget_failures(service)


async def test_sign_in_is_throttled_per_client_address(service: Service, clerk: TestOperator):
    try:
        for i in range(21):  # 20 free failures per address, over as many logins
            status, _, _ = await _sign_in(service, f"guess-{i}-{secrets.token_hex(3)}", "x" * 12)
            assert status == 401
        status, body, resp = await _request(
            service,
            "POST",
            "/v1/operator-sessions",
            json={"login": clerk.login, "password": PASSWORD},
        )
        assert status == 429 and _code(body) == "LOGIN_THROTTLED"
        assert "Retry-After" in resp.headers
    finally:
        await _forget_failures(service)


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short-1A!", "at least 12"),
        ("x" * 129, "at most 128"),
        ("Password2024!", "common word"),
        ("123456789012", "commonly used"),
        ("my-login-is-LOGIN-here", "login"),
        ("abababababababab", "too few different"),
    ],
)
async def test_weak_passwords_are_refused_with_a_reason(service: Service, password, reason):
    login = "login" if "login" in password.lower() else "new-" + secrets.token_hex(4)
    status, body, _ = await _request(
        service,
        "POST",
        "/v1/operators",
        json={"login": login, "display_name": "新人", "roles": ["clerk"], "password": password},
        token=service.admin_token,
    )
    assert status == 422 and _code(body) == "PASSWORD_TOO_WEAK", body
    assert reason in body["error"]["details"]["reason"]


async def test_operators_are_created_listed_updated_and_never_show_the_hash(service: Service):
    login = "op-" + secrets.token_hex(4)
    status, created, _ = await _request(
        service,
        "POST",
        "/v1/operators",
        json={
            "login": login,
            "display_name": "审核员乙",
            "roles": ["reviewer"],
            "password": STRONG,
        },
        token=service.admin_token,
    )
    assert status == 201 and created["operator_id"].startswith("OP")
    assert "password" not in repr(created) and "hash" not in repr(created)
    status, again, _ = await _request(
        service,
        "POST",
        "/v1/operators",
        json={"login": login, "display_name": "x", "roles": ["clerk"], "password": STRONG},
        token=service.admin_token,
    )
    assert status == 409 and _code(again) == "OPERATOR_EXISTS"
    status, page, _ = await _request(
        service, "GET", "/v1/operators?page_size=200&sort=-created_at", token=service.admin_token
    )
    assert status == 200 and page["page"] == 1 and page["page_size"] == 200
    assert page["total"] >= 1 and created in page["items"]
    status, bad, _ = await _request(
        service, "GET", "/v1/operators?sort=password_hash", token=service.admin_token
    )
    assert status == 400 and _code(bad) == "QUERY_INVALID"
    assert bad["error"]["details"]["parameter"] == "sort"
    oid = created["operator_id"]
    status, updated, _ = await _request(
        service,
        "PATCH",
        f"/v1/operators/{oid}",
        json={"roles": ["reviewer", "auditor"], "display_name": "审核员乙2"},
        token=service.admin_token,
    )
    assert status == 200 and updated["roles"] == ["auditor", "reviewer"]
    status, fetched, _ = await _request(
        service, "GET", f"/v1/operators/{oid}", token=service.admin_token
    )
    assert status == 200 and fetched == updated


async def test_tokens_are_shown_once_and_revocation_takes_effect_at_once(
    service: Service, clerk: TestOperator
):
    path = f"/v1/operators/{clerk.operator_id}/tokens"
    status, made, _ = await _request(
        service,
        "POST",
        path,
        json={"name": "counter pc", "expires_in_days": 7},
        token=service.admin_token,
    )
    assert status == 201 and made["token"].startswith("cso_") and made["name"] == "counter pc"
    probe = "/v1/persons/1100009999999999"
    assert (await _request(service, "GET", probe, token=made["token"]))[0] == 404
    status, listed, _ = await _request(service, "GET", path, token=clerk.token)
    assert status == 200
    mine = next(t for t in listed["items"] if t["token_id"] == made["token_id"])
    assert "token" not in mine and mine["last_used_at"] is not None
    assert mine["revoked_at"] is None
    # The clerk revokes its own token: refused on the very next request.
    status, _, _ = await _request(
        service, "DELETE", f"{path}/{made['token_id']}", token=clerk.token
    )
    assert status == 204
    status, body, _ = await _request(service, "GET", probe, token=made["token"])
    assert status == 401 and _code(body) == "OPERATOR_TOKEN_INVALID"
    # A clerk manages only its own tokens.
    other = await create_operator(service.database_url, ("clerk",))
    status, body, _ = await _request(
        service,
        "POST",
        f"/v1/operators/{other.operator_id}/tokens",
        json={"name": "x"},
        token=clerk.token,
    )
    assert status == 403 and _code(body) == "NOT_OWN_OPERATOR"


async def test_disabling_ends_sessions_and_revokes_tokens(service: Service, clerk: TestOperator):
    _, _, cookie = await _sign_in(service, clerk.login, PASSWORD)
    probe = "/v1/persons/1100009999999999"
    assert (await _request(service, "GET", probe, cookie=cookie))[0] == 404
    status, _, _ = await _request(
        service,
        "PATCH",
        f"/v1/operators/{clerk.operator_id}",
        json={"status": "disabled"},
        token=service.admin_token,
    )
    assert status == 200
    status, body, _ = await _request(service, "GET", probe, cookie=cookie)
    assert status == 401 and _code(body) == "SESSION_INVALID"
    status, body, _ = await _request(service, "GET", probe, token=clerk.token)
    assert status == 401 and _code(body) == "OPERATOR_TOKEN_INVALID"
    # Enabled again, its old token stays revoked.
    await _request(
        service,
        "PATCH",
        f"/v1/operators/{clerk.operator_id}",
        json={"status": "active"},
        token=service.admin_token,
    )
    assert (await _request(service, "GET", probe, token=clerk.token))[0] == 401


async def test_passwords_changed_by_self_and_reset_by_an_administrator(
    service: Service, clerk: TestOperator
):
    _, first, cookie = await _sign_in(service, clerk.login, PASSWORD)
    _, _, other_cookie = await _sign_in(service, clerk.login, PASSWORD)
    path = "/v1/operator-sessions/current/password"
    status, body, _ = await _request(
        service,
        "PUT",
        path,
        json={"current_password": "not it at all", "new_password": STRONG},
        cookie=cookie,
        csrf=first["csrf_token"],
    )
    assert status == 403 and _code(body) == "PASSWORD_WRONG"
    status, _, _ = await _request(
        service,
        "PUT",
        path,
        json={"current_password": PASSWORD, "new_password": STRONG},
        cookie=cookie,
        csrf=first["csrf_token"],
    )
    assert status == 204
    # This session goes on, the operator's others end; the old password no longer works.
    assert (await _request(service, "GET", "/v1/operator-sessions/current", cookie=cookie))[
        0
    ] == 200
    status, body, _ = await _request(
        service, "GET", "/v1/operator-sessions/current", cookie=other_cookie
    )
    assert status == 401 and _code(body) == "SESSION_INVALID"
    assert (await _sign_in(service, clerk.login, PASSWORD))[0] == 401
    # The administrator resets it: every session ends.
    status, _, _ = await _request(
        service,
        "POST",
        f"/v1/operators/{clerk.operator_id}/password",
        json={"password": STRONG + " reset"},
        token=service.admin_token,
    )
    assert status == 204
    assert (await _request(service, "GET", "/v1/operator-sessions/current", cookie=cookie))[
        0
    ] == 401
    assert (await _sign_in(service, clerk.login, STRONG + " reset"))[0] == 201
    # A bearer token is not a session: the session's own routes refuse it.
    status, body, _ = await _request(
        service, "GET", "/v1/operator-sessions/current", token=clerk.token
    )
    assert status == 401 and _code(body) == "SESSION_REQUIRED"


async def test_audit_entries_name_the_operator(service: Service):
    admin = await create_operator(service.database_url, ("administrator",), name="管理员丙")
    code = "H" + secrets.token_hex(5).upper()
    status, _, _ = await _request(
        service,
        "POST",
        "/v1/facilities",
        json={
            "fixmedins_code": code,
            "fixmedins_name": "测试医院",
            "type": "pharmacy",
            "agreements": ["310"],
        },
        token=admin.token,
    )
    assert status == 201
    conn = await asyncpg.connect(service.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT actor, data FROM audit_log WHERE object_type = 'facility' AND object_id = $1",
            code,
        )
    finally:
        await conn.close()
    data = msgspec.json.decode(row["data"])
    assert row["actor"] == f"operator:{admin.operator_id}"
    assert (data["operator_id"], data["operator_name"]) == (admin.operator_id, "管理员丙")
    # In the chained entry: the log verifies.
    status, verdict, _ = await _request(
        service, "GET", "/v1/audit/verify", token=service.admin_token
    )
    assert status == 200 and verdict["ok"], verdict


# -- a second service: a database of its own (no administrator yet), short sessions ---------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fresh(pg_cluster: LocalCluster, settings: Settings) -> AsyncIterator[Service]:
    name = "cardsvc_ops_" + secrets.token_hex(4)
    await asyncio.to_thread(pg_cluster.create_database, name)
    url = pg_cluster.url(name)
    await db.migrate_url(url)
    own = msgspec.structs.replace(
        settings,
        database_url=url,
        port=free_port(),
        operator_session_idle_seconds=1,
        operator_session_max_seconds=3,
    )
    runner = web.AppRunner(create_app(own))
    await runner.setup()
    await web.TCPSite(runner, own.host, own.port).start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Service(f"http://{own.host}:{own.port}", "", http, url, own.admin_token)
    finally:
        await runner.cleanup()


async def test_the_bootstrap_token_creates_the_first_administrator_only(fresh: Service):
    boot = fresh.bootstrap_token
    first = {"login": "root-admin", "display_name": "首任管理员", "roles": ["administrator"]}
    # Not for anything else, even now.
    status, body, _ = await _request(fresh, "GET", "/v1/operators", token=boot)
    assert status == 401 and _code(body) == "BOOTSTRAP_TOKEN_REFUSED"
    status, body, _ = await _request(
        fresh,
        "POST",
        "/v1/operators",
        json={**first, "roles": ["clerk"], "password": STRONG},
        token=boot,
    )
    assert status == 422 and _code(body) == "BOOTSTRAP_NEEDS_ADMINISTRATOR"
    status, created, _ = await _request(
        fresh, "POST", "/v1/operators", json={**first, "password": STRONG}, token=boot
    )
    assert status == 201, created
    status, body, _ = await _request(
        fresh,
        "POST",
        "/v1/operators",
        json={**first, "login": "second-admin", "password": STRONG},
        token=boot,
    )
    assert status == 401 and _code(body) == "BOOTSTRAP_CLOSED"
    conn = await asyncpg.connect(fresh.database_url)
    try:
        actor = await conn.fetchval(
            "SELECT actor FROM audit_log WHERE object_id = $1 AND action = 'operator.created'",
            created["operator_id"],
        )
    finally:
        await conn.close()
    assert actor == "bootstrap"


async def test_a_session_ends_when_idle_and_at_its_absolute_expiry(fresh: Service):
    operator = await create_operator(fresh.database_url, ("auditor",))
    current = "/v1/operator-sessions/current"
    # Idle (1 s here): a session unused for longer has expired.
    _, _, cookie = await _sign_in(fresh, operator.login, PASSWORD)
    await asyncio.sleep(1.3)
    status, body, _ = await _request(fresh, "GET", current, cookie=cookie)
    assert status == 401 and _code(body) == "SESSION_EXPIRED"
    # Absolute (3 s here): in use all along, it still ends.
    _, _, cookie = await _sign_in(fresh, operator.login, PASSWORD)
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < 2.6:
        status, body, _ = await _request(fresh, "GET", current, cookie=cookie)
        assert status == 200, body
        assert body["idle_expires_at"] <= body["expires_at"]
        await asyncio.sleep(0.5)
    await asyncio.sleep(0.6)
    status, body, _ = await _request(fresh, "GET", current, cookie=cookie)
    assert status == 401 and _code(body) == "SESSION_EXPIRED"


async def _cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "CARDSVC_ADMIN_TOKEN": settings.admin_token,
        "CARDSVC_DATA_KEY": settings.data_key.hex(),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cardsvc",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_create_operator_on_the_command_line(service: Service, settings: Settings, tmp_path):
    login = "cli-" + secrets.token_hex(4)
    secret = tmp_path / "password"
    secret.write_text(STRONG + "\n")
    secret.chmod(0o600)
    args = ("create-operator", "--login", login, "--name", "值班管理员")
    code, out, err = await _cli(
        settings,
        *args,
        "--role",
        "administrator",
        "--role",
        "auditor",
        "--password-file",
        str(secret),
    )
    assert code == 0, err
    operator_id = out.strip()
    status, body, _ = await _sign_in(service, login, STRONG)
    assert status == 201 and body["operator"]["operator_id"] == operator_id
    assert body["operator"]["roles"] == ["administrator", "auditor"]
    # The same rules as the API: a weak password or a taken login is refused, in one line.
    weak = tmp_path / "weak"
    weak.write_text("short\n")
    code, _, err = await _cli(
        settings,
        "create-operator",
        "--login",
        "cli-x",
        "--name",
        "x",
        "--role",
        "clerk",
        "--password-file",
        str(weak),
    )
    assert code == 1 and "PASSWORD_TOO_WEAK" in err and STRONG not in err
    code, _, err = await _cli(settings, *args, "--role", "clerk", "--password-file", str(secret))
    assert code == 1 and "OPERATOR_EXISTS" in err


async def test_a_cookie_that_is_not_ascii_is_refused_not_a_fault(service: Service):
    reader, writer = await asyncio.open_connection(*service.base_url[7:].split(":"))
    writer.write(
        b"DELETE /v1/operator-sessions/current HTTP/1.1\r\nHost: x\r\nX-CSRF-Token: x\r\n"
        b"Cookie: cardsvc_session=\xff\xfe-not-utf-8\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"SESSION_INVALID" in answer
