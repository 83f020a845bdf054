"""``TerminalClient``: a terminal's signed HTTP client for cardsvc.

Signs in (mutual authentication with K_term, checking the service's cryptogram), signs
every request as the crypto profile says, and signs in again by itself when the service
answers that the session expired or ended.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any

import aiohttp
import msgspec

from cardcrypto import profile

_encoder = msgspec.json.Encoder()
_LARGE_BODY = 512 * 1024  # bytes; aiohttp warns from 1 MiB
# Refusals that a new session cures: expired, or ended (its terminal was disabled and
# enabled again, or the service restarted after a database failure).
_SIGN_IN_AGAIN = frozenset({"SESSION_EXPIRED", "SESSION_ENDED"})


class TerminalError(Exception):
    """The service refused a request; carries the HTTP status and the error body."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details


class ServerNotAuthenticated(Exception):
    """The service's sign-in cryptogram was wrong: this is not our cardsvc."""


class Response(msgspec.Struct, frozen=True):
    status: int
    body: Any


class TerminalClient:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        terminal_id: str,
        terminal_key: bytes,
    ) -> None:
        self._http, self._base = http, base_url.rstrip("/")
        self.terminal_id, self.terminal_key = terminal_id, terminal_key
        self.session_id: str | None = None
        self._session_key: bytes | None = None

    async def sign_in(self) -> None:
        started = await self._post_unsigned(
            "/v1/terminals/sign-in", {"terminal_id": self.terminal_id}
        )
        rs, rt = bytes.fromhex(started["challenge"]), os.urandom(16)
        opened = await self._post_unsigned(
            "/v1/terminals/sign-in/complete",
            {
                "terminal_id": self.terminal_id,
                "challenge": rs.hex(),
                "terminal_random": rt.hex(),
                "cryptogram": profile.terminal_cryptogram(self.terminal_key, rs, rt).hex(),
            },
        )
        expected = profile.server_cryptogram(self.terminal_key, rs, rt).hex()
        if not profile.signatures_equal(expected, opened["server_cryptogram"]):
            raise ServerNotAuthenticated("the service's sign-in cryptogram is wrong")
        self.session_id = opened["session_id"]
        self._session_key = profile.derive_session_key(self.terminal_key, rs, rt)

    def signed_headers(
        self,
        method: str,
        path_qs: str,
        body: bytes,
        *,
        timestamp: int | None = None,
        nonce: str | None = None,
    ) -> dict[str, str]:
        if self._session_key is None or self.session_id is None:
            raise RuntimeError("sign in first")
        ts = str(int(time.time()) if timestamp is None else timestamp)
        nonce = nonce or os.urandom(16).hex()
        return {
            "X-Terminal-Id": self.terminal_id,
            "X-Session-Id": self.session_id,
            "X-Timestamp": ts,
            "X-Nonce": nonce,
            "X-Signature": profile.request_signature(
                self._session_key, method, path_qs, ts, nonce, body
            ),
        }

    async def send(
        self, method: str, path_qs: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        """One request exactly as given (no re-sign-in): the raw building block."""
        all_headers = {"Content-Type": "application/json"} if body else {}
        all_headers.update(headers or {})
        # aiohttp writes a large bytes body in one call that holds the event loop; a stream
        # is written in chunks (a day's reconciliation detail can be over a megabyte).
        data: bytes | io.BytesIO = io.BytesIO(body) if len(body) > _LARGE_BODY else body
        async with self._http.request(
            method, self._base + path_qs, data=data, headers=all_headers
        ) as resp:
            payload = await resp.read()
            if resp.content_type == "application/json" and payload:
                return Response(resp.status, msgspec.json.decode(payload))
            return Response(resp.status, payload.decode() if payload else None)

    async def request(
        self, method: str, path_qs: str, json: Any = None, headers: dict[str, str] | None = None
    ) -> Response:
        """A signed request (with any extra headers, such as ``Idempotency-Key``); signs in
        first, and again once if the session expired or ended."""
        if self._session_key is None:
            await self.sign_in()
        body = b"" if json is None else _encoder.encode(json)
        resp = await self._signed(method, path_qs, body, headers)
        if resp.status == 401 and _code(resp) in _SIGN_IN_AGAIN:
            await self.sign_in()
            resp = await self._signed(method, path_qs, body, headers)
        return resp

    async def _signed(
        self, method: str, path_qs: str, body: bytes, headers: dict[str, str] | None
    ) -> Response:
        signed = {**(headers or {}), **self.signed_headers(method, path_qs, body)}
        return await self.send(method, path_qs, body, signed)

    async def call(self, method: str, path_qs: str, json: Any = None) -> Any:
        """A signed request whose error answer raises ``TerminalError``."""
        resp = await self.request(method, path_qs, json)
        if resp.status >= 400:
            raise _error(resp)
        return resp.body

    async def _post_unsigned(self, path: str, payload: dict[str, str]) -> Any:
        resp = await self.send("POST", path, _encoder.encode(payload))
        if resp.status >= 400:
            raise _error(resp)
        return resp.body


def _code(resp: Response) -> str:
    if isinstance(resp.body, dict) and isinstance(resp.body.get("error"), dict):
        return str(resp.body["error"].get("code", ""))
    return ""


def _error(resp: Response) -> TerminalError:
    err = resp.body.get("error", {}) if isinstance(resp.body, dict) else {}
    return TerminalError(
        resp.status, err.get("code", "HTTP_ERROR"), err.get("message", ""), err.get("details", {})
    )
