"""Attacks on operator authentication, each against the real service and PostgreSQL: a
burst of password guesses sent at once, removing the last administrator (which would
reopen the bootstrap token), a sign-in forged by another site's page, and passwords typed
in another Unicode form."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

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
from cardsvc.operators import passwords
from tests.conftest import free_port
from tests.integration.test_operators import _code, _forget_failures, _request, _sign_in
from tests.support.api import Service
from tests.support.operators import PASSWORD, create_operator

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_burst_of_guesses_sent_at_once_is_throttled_like_a_sequence(service: Service):
    victim = await create_operator(service.database_url, ("clerk",))
    try:
        answers = await asyncio.gather(
            *(_sign_in(service, victim.login, f"guess number {i:04d}") for i in range(15))
        )
        statuses = sorted(status for status, _, _ in answers)
        # 5 free failures, the sixth locks the login: the other guesses are never tried,
        # however many were already waiting for the password hasher.
        assert statuses.count(401) <= 6, statuses
        assert statuses.count(429) >= 9, statuses
        await _forget_failures(service)
        # Attempts are counted before the password is tried; a success gives its attempt
        # back, so an office signing in all day from one address is never locked.
        operator = await create_operator(service.database_url, ("auditor",))
        for _ in range(25):  # more than an address's 20 free failures
            assert (await _sign_in(service, operator.login, PASSWORD))[0] == 201
    finally:
        await _forget_failures(service)


# -- a database of its own, where the administrators are known -----------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def own(pg_cluster: LocalCluster, settings: Settings) -> AsyncIterator[Service]:
    name = "cardsvc_attacks_" + secrets.token_hex(4)
    await asyncio.to_thread(pg_cluster.create_database, name)
    url = pg_cluster.url(name)
    await db.migrate_url(url)
    mine = msgspec.structs.replace(settings, database_url=url, port=free_port())
    runner = web.AppRunner(create_app(mine))
    await runner.setup()
    await web.TCPSite(runner, mine.host, mine.port).start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Service(f"http://{mine.host}:{mine.port}", "", http, url, mine.admin_token)
    finally:
        await runner.cleanup()


async def _disable_every_administrator(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "UPDATE operators SET status = 'disabled' WHERE 'administrator' = ANY (roles)"
        )
    finally:
        await conn.close()


async def test_the_last_administrator_cannot_be_disabled_or_demoted(own: Service):
    await _disable_every_administrator(own.database_url)
    admin = await create_operator(own.database_url, ("administrator", "clerk"))
    path = f"/v1/operators/{admin.operator_id}"
    for change in ({"roles": ["clerk"]}, {"status": "disabled"}):
        status, body, _ = await _request(own, "PATCH", path, json=change, token=admin.token)
        assert status == 409 and _code(body) == "LAST_ADMINISTRATOR", body
    # So the bootstrap token stays closed.
    status, body, _ = await _request(
        own,
        "POST",
        "/v1/operators",
        json={
            "login": "boot-again",
            "display_name": "x",
            "roles": ["administrator"],
            "password": "a long and unusual passphrase 7",
        },
        token=own.bootstrap_token,
    )
    assert status == 401 and _code(body) == "BOOTSTRAP_CLOSED", body
    # With another administrator, either may step down.
    other = await create_operator(own.database_url, ("administrator",))
    status, body, _ = await _request(
        own, "PATCH", path, json={"roles": ["clerk"]}, token=other.token
    )
    assert status == 200 and body["roles"] == ["clerk"], body


async def test_two_administrators_disabling_each_other_at_once_leave_one(own: Service):
    await _disable_every_administrator(own.database_url)
    first = await create_operator(own.database_url, ("administrator",))
    second = await create_operator(own.database_url, ("administrator",))
    answers = await asyncio.gather(
        _request(
            own,
            "PATCH",
            f"/v1/operators/{second.operator_id}",
            json={"status": "disabled"},
            token=first.token,
        ),
        _request(
            own,
            "PATCH",
            f"/v1/operators/{first.operator_id}",
            json={"status": "disabled"},
            token=second.token,
        ),
    )
    statuses = sorted(status for status, _, _ in answers)
    # The one that lost is refused: by LAST_ADMINISTRATOR, or by its own token's revocation.
    assert statuses[0] == 200 and statuses[1] in (401, 409), statuses
    conn = await asyncpg.connect(own.database_url)
    try:
        active = await conn.fetchval(
            "SELECT count(*) FROM operators WHERE status = 'active'"
            " AND 'administrator' = ANY (roles)"
        )
    finally:
        await conn.close()
    assert active == 1


async def test_another_sites_form_cannot_sign_the_browser_in(service: Service):
    """Login CSRF: a page elsewhere posts the attacker's own credentials, as a form can
    (``text/plain`` whose one field name carries the JSON), so the victim's browser would
    work in the attacker's account."""
    attacker = await create_operator(service.database_url, ("clerk",))
    # <form enctype="text/plain"> with name='{"login":"…","password":"correct horse battery'
    # and value=' staple"}' sends exactly this body (the "=" falls inside the password).
    head, tail = PASSWORD.split(" ", 1)
    body = f'{{"login":"{attacker.login}","password":"{head}={tail}"}}'
    conn = await asyncpg.connect(service.database_url)
    try:
        await conn.execute(
            "UPDATE operators SET password_hash = $2 WHERE operator_id = $1",
            attacker.operator_id,
            passwords.hash_password(f"{head}={tail}"),
        )
    finally:
        await conn.close()
    try:
        for headers in (
            {"Content-Type": "text/plain", "Origin": "https://evil.example"},
            {"Content-Type": "text/plain"},  # a browser that sent no Origin
            {"Content-Type": "application/json", "Origin": "https://evil.example"},
        ):
            async with service.http.post(
                service.base_url + "/v1/operator-sessions", data=body, headers=headers
            ) as resp:
                answer = msgspec.json.decode(await resp.read())
                assert resp.status == 403 and _code(answer) == "CSRF_FAILED", (headers, answer)
                assert "cardsvc_session" not in resp.cookies
        # The console's own script (same origin, JSON) signs in.
        status, _, _ = await _request(
            service,
            "POST",
            "/v1/operator-sessions",
            json={"login": attacker.login, "password": f"{head}={tail}"},
            headers={"Origin": service.base_url},
        )
        assert status == 201
    finally:
        await _forget_failures(service)


async def test_anchoring_on_request_is_audited_naming_the_operator(service: Service):
    auditor = await create_operator(service.database_url, ("auditor",), name="审计员丁")
    status, written, _ = await _request(service, "POST", "/v1/audit/anchors", token=auditor.token)
    assert status == 201, written
    conn = await asyncpg.connect(service.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT actor, data FROM audit_log WHERE action = 'audit.anchored' AND actor = $1",
            f"operator:{auditor.operator_id}",
        )
    finally:
        await conn.close()
    assert row is not None
    data = msgspec.json.decode(row["data"])
    assert (data["operator_id"], data["operator_name"]) == (auditor.operator_id, "审计员丁")
    assert data["entries"] == written["entries"]
    status, verdict, _ = await _request(service, "GET", "/v1/audit/verify", token=auditor.token)
    assert status == 200 and verdict["ok"], verdict


async def test_an_action_taken_with_a_token_names_the_token_and_so_who_made_it(
    service: Service,
):
    """An administrator may make a token for another operator, and a stolen token may make
    more: the audit log must tell those actions from the operator's own."""
    admin = await create_operator(service.database_url, ("administrator",))
    clerk = await create_operator(service.database_url, ("clerk",), name="柜员戊")
    status, made, _ = await _request(
        service,
        "POST",
        f"/v1/operators/{clerk.operator_id}/tokens",
        json={"name": "made by the administrator"},
        token=admin.token,
    )
    assert status == 201, made
    status, again, _ = await _request(
        service,
        "POST",
        f"/v1/operators/{clerk.operator_id}/tokens",
        json={"name": "made with that token"},
        token=made["token"],
    )
    assert status == 201, again
    conn = await asyncpg.connect(service.database_url)
    try:
        rows = {
            msgspec.json.decode(r["data"])["name"]: (r["actor"], msgspec.json.decode(r["data"]))
            for r in await conn.fetch(
                "SELECT actor, data FROM audit_log WHERE action = 'operator.token_created'"
                " AND object_id = $1",
                clerk.operator_id,
            )
        }
    finally:
        await conn.close()
    actor, data = rows["made with that token"]
    assert actor == f"operator:{clerk.operator_id}" and data["token_id"] == again["token_id"]
    # Made by the clerk's id, but with the token the administrator made: traceable.
    assert data.get("via_token_id") == made["token_id"]
    actor, data = rows["made by the administrator"]
    assert actor == f"operator:{admin.operator_id}" and data["token_id"] == made["token_id"]
    assert data.get("via_token_id", "").startswith("OT")
