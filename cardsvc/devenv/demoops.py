"""The demo's operators: one per role, made once through the API as a fund office would.

The bootstrap token (CARDSVC_ADMIN_TOKEN) creates the first administrator, which signs in,
takes an API token for the demo's own set-up calls, and creates a clerk (with a token: the
demo's persons and credits are a clerk's work), a reviewer and an auditor. Each password goes
to ``var/secrets/operators/<login>``, the tokens to ``var/secrets/operator_token`` and
``clerk_token`` (mode 0600): the demo prints the logins and where the passwords are, never a
password."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import aiohttp

from cardsvc.operators.passwords import weakness

OPERATORS = [
    ("demo.admin", "演示管理员", "administrator"),
    ("demo.clerk", "演示柜员", "clerk"),
    ("demo.reviewer", "演示审核员", "reviewer"),
    ("demo.auditor", "演示审计员", "auditor"),
]


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def _password(login: str) -> str:
    while True:
        candidate = secrets.token_urlsafe(15)
        if weakness(candidate, login) is None:
            return candidate


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, payload: Any, headers: dict[str, str]
) -> Any:
    async with http.request(method, url, json=payload, headers=headers) as resp:
        body = await resp.json()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {url}: {resp.status} {body}")
        return body


async def ensure(base_url: str, bootstrap_token: str, secrets_dir: Path) -> tuple[str, str]:
    """The demo administrator's and clerk's API tokens, creating the four operators on the
    first run."""
    token_file, clerk_file = secrets_dir / "operator_token", secrets_dir / "clerk_token"
    if token_file.exists() and clerk_file.exists():
        return token_file.read_text().strip(), clerk_file.read_text().strip()
    folder = secrets_dir / "operators"
    async with aiohttp.ClientSession() as http:
        login, name, role = OPERATORS[0]
        password = _password(login)
        admin = await _call(
            http,
            "POST",
            base_url + "/v1/operators",
            {"login": login, "display_name": name, "roles": [role], "password": password},
            {"Authorization": f"Bearer {bootstrap_token}"},
        )
        _write_private(folder / login, password + "\n")
        async with http.post(
            base_url + "/v1/operator-sessions", json={"login": login, "password": password}
        ) as resp:
            session = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"signing the demo administrator in: {resp.status} {session}")
            cookie = resp.cookies["cardsvc_session"].value
        made = await _call(
            http,
            "POST",
            f"{base_url}/v1/operators/{admin['operator_id']}/tokens",
            {"name": "demo set-up", "expires_in_days": 365},
            {"Cookie": f"cardsvc_session={cookie}", "X-CSRF-Token": session["csrf_token"]},
        )
        token: str = made["token"]
        clerk_token = ""
        for login, name, role in OPERATORS[1:]:
            password = _password(login)
            made = await _call(
                http,
                "POST",
                base_url + "/v1/operators",
                {"login": login, "display_name": name, "roles": [role], "password": password},
                {"Authorization": f"Bearer {token}"},
            )
            _write_private(folder / login, password + "\n")
            if role == "clerk":
                clerk_token = (
                    await _call(
                        http,
                        "POST",
                        f"{base_url}/v1/operators/{made['operator_id']}/tokens",
                        {"name": "demo set-up", "expires_in_days": 365},
                        {"Authorization": f"Bearer {token}"},
                    )
                )["token"]
    _write_private(token_file, token + "\n")
    _write_private(clerk_file, clerk_token + "\n")
    _write_private(
        secrets_dir / "operators.json",
        json.dumps([{"login": o[0], "role": o[2]} for o in OPERATORS], ensure_ascii=False),
    )
    return token, clerk_token
