"""Operator API calls (an operator's bearer token) against the service the harness started."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec


class ApiError(RuntimeError):
    """The service refused an operator call; the message carries status and error code only."""

    def __init__(self, method: str, path: str, status: int, code: str) -> None:
        super().__init__(f"{method} {path}: {status} {code}")
        self.status, self.code = status, code


class Admin:
    def __init__(self, http: aiohttp.ClientSession, base_url: str, token: str) -> None:
        self._http, self._base = http, base_url
        self._headers = {"Authorization": f"Bearer {token}"}

    async def request(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        async with self._http.request(
            method, self._base + path, json=json, headers=self._headers
        ) as resp:
            raw = await resp.read()
            return resp.status, msgspec.json.decode(raw) if raw else None

    async def call(self, method: str, path: str, json: Any = None) -> Any:
        status, body = await self.request(method, path, json)
        if status >= 300:
            raise ApiError(method, path, status, error_code(body))
        return body


def error_code(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code", "HTTP_ERROR"))
    return "HTTP_ERROR"


LOGIN = "loadtest"
ROLES = ["administrator", "clerk", "reviewer", "auditor"]


async def operator_token(
    base_url: str, bootstrap_token: str, password: str, saved: str | None
) -> str:
    """The harness's operator API token (all four roles: it seeds, clears and checks).

    ``saved`` (the token kept from an earlier run) if it still works; else a new one, its
    operator made through the bootstrap path the first time (the harness's database has no
    administrator yet), or, once that operator exists, signed in with the password kept in
    the state folder."""
    async with aiohttp.ClientSession() as http:
        if saved:
            status, _ = await Admin(http, base_url, saved).request(
                "GET", "/v1/operators?page_size=1"
            )
            if status == 200:
                return saved
        status, body = await Admin(http, base_url, bootstrap_token).request(
            "POST",
            "/v1/operators",
            {"login": LOGIN, "display_name": "负载测试", "roles": ROLES, "password": password},
        )
        if status != 201 and error_code(body) not in ("BOOTSTRAP_CLOSED", "OPERATOR_EXISTS"):
            raise ApiError("POST", "/v1/operators", status, error_code(body))
        async with http.post(
            base_url + "/v1/operator-sessions", json={"login": LOGIN, "password": password}
        ) as resp:
            session = msgspec.json.decode(await resp.read())
            if resp.status != 201:
                # Another administrator exists and this state folder's operator does not:
                # create it with `python -m cardsvc create-operator`.
                raise ApiError("POST", "/v1/operator-sessions", resp.status, error_code(session))
            cookie = resp.cookies["cardsvc_session"].value
        operator_id = session["operator"]["operator_id"]
        headers = {"Cookie": f"cardsvc_session={cookie}", "X-CSRF-Token": session["csrf_token"]}
        async with http.post(
            f"{base_url}/v1/operators/{operator_id}/tokens",
            json={"name": "load harness", "expires_in_days": 365},
            headers=headers,
        ) as resp:
            made = msgspec.json.decode(await resp.read())
            if resp.status != 201:
                raise ApiError("POST", "/v1/operators/{id}/tokens", resp.status, error_code(made))
    return str(made["token"])
