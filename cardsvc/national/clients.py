"""Gateway clients: registered by the administrator for one facility each, with a secret
shown once and stored only encrypted under the data key (AAD: the paasid).

The TIF signature needs the secret in clear, so each worker keeps the secrets it has
decrypted in a bounded cache (``key``): a secret never changes, and a client's standing
(disabled, its facility suspended) is read with every message's admission
(``cardsvc.national.messages``), never cached, so disabling takes effect on the next
message. A paasid the database does not know is remembered as unknown for a while too
(bounded), so a stranger repeating one costs no database read: paasids are minted at
random here and shown only once registered, so none is looked for before it exists.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

import asyncpg

from cardsvc.audit.services import AuditLog
from cardsvc.db import Pool, transaction
from cardsvc.errors import NotFound
from cardsvc.national.models import (
    CreateGatewayClient,
    GatewayClient,
    GatewayClientCreated,
    GatewayClientList,
    UpdateGatewayClient,
)
from cardsvc.privacy import DataProtector
from cardsvc.web.caller import Caller

PAASID_PREFIX = "gw"
_CACHE_MAX = 10_000
# Unknown paasids remembered per worker (least recently seen forgotten first), and for how
# long (seconds).
_UNKNOWN_MAX = 10_000
_UNKNOWN_TTL = 60.0


@dataclass(frozen=True, slots=True)
class ClientKey:
    """What a worker keeps of a client: its secret (clear) and its facility."""

    paasid: str
    secret: str
    fixmedins_code: str


def _client(row: asyncpg.Record) -> GatewayClient:
    return GatewayClient(**dict(row))


class GatewayClients:
    def __init__(self, pool: Pool, protector: DataProtector, audit: AuditLog) -> None:
        self._pool, self._protector, self._audit = pool, protector, audit
        self._keys: OrderedDict[str, ClientKey] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()  # paasid → forgotten at

    async def create(self, caller: Caller, req: CreateGatewayClient) -> GatewayClientCreated:
        paasid = f"{PAASID_PREFIX}{secrets.token_hex(8)}"
        secret = secrets.token_urlsafe(32)
        async with transaction(self._pool) as conn:
            try:
                row = await conn.fetchrow(
                    "INSERT INTO gateway_clients (paasid, fixmedins_code, secret_enc)"
                    " VALUES ($1, $2, $3) RETURNING fixmedins_code, status, created_at",
                    paasid,
                    req.fixmedins_code,
                    self._protector.encrypt(secret.encode(), paasid.encode()),
                )
            except asyncpg.ForeignKeyViolationError:
                raise NotFound("no such facility", code="FACILITY_NOT_FOUND") from None
            await self._audit.record(
                conn,
                caller,
                action="gateway_client.created",
                object_type="gateway_client",
                object_id=paasid,
                data={"fixmedins_code": req.fixmedins_code},
            )
        self._unknown.pop(paasid, None)
        return GatewayClientCreated(
            paasid=paasid,
            secret=secret,
            fixmedins_code=row["fixmedins_code"],
            status=row["status"],
            created_at=row["created_at"],
        )

    async def list(self, fixmedins_code: str | None) -> GatewayClientList:
        rows = await self._pool.fetch(
            "SELECT paasid, fixmedins_code, status, created_at, updated_at FROM gateway_clients"
            " WHERE $1::text IS NULL OR fixmedins_code = $1 ORDER BY created_at, paasid",
            fixmedins_code,
        )
        return GatewayClientList(clients=[_client(r) for r in rows])

    async def update(self, caller: Caller, paasid: str, req: UpdateGatewayClient) -> GatewayClient:
        async with transaction(self._pool) as conn:
            row = await conn.fetchrow(
                "UPDATE gateway_clients SET status = $2, updated_at = now()"
                " WHERE paasid = $1"
                " RETURNING paasid, fixmedins_code, status, created_at, updated_at",
                paasid,
                req.status,
            )
            if row is None:
                raise NotFound("no such gateway client", code="GATEWAY_CLIENT_NOT_FOUND")
            await self._audit.record(
                conn,
                caller,
                action="gateway_client.updated",
                object_type="gateway_client",
                object_id=paasid,
                data={"status": req.status},
            )
        return _client(row)

    async def key(self, paasid: str) -> ClientKey | None:
        """The client's secret and facility (cached per worker); None if there is no such
        client (remembered a while: asked again, no read). Its standing is not looked at
        here."""
        cached = self._keys.get(paasid)
        if cached is not None:
            self._keys.move_to_end(paasid)
            return cached
        if not 1 <= len(paasid) <= 64 or self._known_unknown(paasid, time.monotonic()):
            return None
        row = await self._pool.fetchrow(
            "SELECT fixmedins_code, secret_enc FROM gateway_clients WHERE paasid = $1", paasid
        )
        if row is None:
            self._unknown[paasid] = time.monotonic() + _UNKNOWN_TTL
            if len(self._unknown) > _UNKNOWN_MAX:
                self._unknown.popitem(last=False)
            return None
        secret = self._protector.decrypt(row["secret_enc"], paasid.encode()).decode()
        key = ClientKey(paasid=paasid, secret=secret, fixmedins_code=row["fixmedins_code"])
        self._keys[paasid] = key
        if len(self._keys) > _CACHE_MAX:
            self._keys.popitem(last=False)
        return key

    def _known_unknown(self, paasid: str, now: float) -> bool:
        forgotten_at = self._unknown.get(paasid)
        if forgotten_at is None:
            return False
        if forgotten_at <= now:
            del self._unknown[paasid]
            return False
        self._unknown.move_to_end(paasid)
        return True

    async def purge_expired(self, window: dt.timedelta) -> int:
        """Drop the nonces older than ``window`` (twice the timestamp window: a request
        older than that is refused by its timestamp) and sign-ins long expired."""
        async with transaction(self._pool) as conn:
            nonces = await conn.execute(
                "DELETE FROM gateway_nonces WHERE seen_at < now() - $1::interval", window
            )
            await conn.execute(
                "DELETE FROM gateway_signins WHERE expires_at < now() - interval '7 days'"
            )
        return int(nonces.split()[-1])
