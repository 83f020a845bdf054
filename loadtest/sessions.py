"""Terminal sessions kept between runs, so a run need not sign its terminals in again.

Sessions live in the database (12 h by default), so they are kept in
``<state>/sessions.json`` (mode 0600) and reused while they are valid. A resumed session is
checked with one cheap signed request before use. Card tokens are not kept: a transaction
token pays for one settlement, so each step prepares its own (``generator.prepare_step``).
"""

from __future__ import annotations

import time

import aiohttp
import msgspec

from cardsvc.terminal_sdk.client import TerminalClient

# Something a settling terminal may ask whose answer needs a valid session: a 404.
PROBE = "/v1/settlements/S20000101" + "0" * 20
MARGIN_S = 3600.0  # what is left of a session must cover a long run


class CachedSession(msgspec.Struct, array_like=True):
    session_id: str
    key: str  # hex session key
    expires_at: float


class GeneratorCache(msgspec.Struct, kw_only=True):
    sessions: dict[str, CachedSession] = {}


class Cache(msgspec.Struct, kw_only=True):
    database: str  # which database these sessions exist in
    generators: dict[int, GeneratorCache] = {}  # sessions, per generator process


class ResumableClient(TerminalClient):
    """A ``TerminalClient`` that can hand over and take back its session."""

    def __init__(
        self, http: aiohttp.ClientSession, base_url: str, terminal_id: str, key: bytes
    ) -> None:
        super().__init__(http, base_url, terminal_id, key)
        self.expires_at = 0.0

    async def sign_in_for(self, session_ttl: float) -> None:
        await self.sign_in()
        self.expires_at = time.time() + session_ttl

    def export(self) -> CachedSession | None:
        if self.session_id is None or self._session_key is None:
            return None
        return CachedSession(self.session_id, self._session_key.hex(), self.expires_at)

    async def resume(self, cached: CachedSession) -> bool:
        """Take the cached session if it is still good; False if it must sign in again."""
        if cached.expires_at < time.time() + MARGIN_S:
            return False
        self.session_id, self._session_key = cached.session_id, bytes.fromhex(cached.key)
        self.expires_at = cached.expires_at
        resp = await self.send("GET", PROBE, b"", self.signed_headers("GET", PROBE, b""))
        if resp.status == 404:
            return True
        self.session_id, self._session_key = None, None
        return False
