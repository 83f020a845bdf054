"""Admin API calls (bearer token) against the service the harness started."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec


class ApiError(RuntimeError):
    """The service refused an admin call; the message carries status and error code only."""

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
