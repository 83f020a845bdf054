"""The application factory: settings in, a wired aiohttp application out.

Resources (database pool, HSM client, periodic housekeeping) are opened and closed in
``cleanup_ctx`` generators, in order, so a failed start closes what was opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from cardsvc import db
from cardsvc.config import Settings
from cardsvc.datakey import services as datakey
from cardsvc.hsm.tls import hsm_client
from cardsvc.ops import gcpause
from cardsvc.ops.services import Health
from cardsvc.routes import setup_routes
from cardsvc.services import build_services
from cardsvc.terminals.admission import fence_after_crash
from cardsvc.web import middleware
from cardsvc.web.appkeys import HSM, POOL, SERVICES, SETTINGS

log = structlog.get_logger(__name__)

HOUSEKEEPING_SECONDS = 60.0


async def _database(app: web.Application) -> AsyncIterator[None]:
    # Every connection checks for a database crash first (the replay fence).
    app[POOL] = await db.create_pool(app[SETTINGS], init=fence_after_crash)
    yield
    await app[POOL].close()


async def _data_key(app: web.Application) -> AsyncIterator[None]:
    """Refuse to serve with a data key other than the database's (serve checks it before
    the workers start; this covers every other way of starting the app)."""
    async with app[POOL].acquire() as conn:
        await datakey.check(conn, app[SETTINGS].data_key)
    yield


async def _hsm(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    client = hsm_client(settings)
    await client.start()
    app[HSM] = client
    yield
    await client.close()


async def _services(app: web.Application) -> AsyncIterator[None]:
    app[SERVICES] = build_services(app[SETTINGS], app[POOL], app[HSM])
    yield
    # Requests in flight have finished (aiohttp's shutdown waits for them): the settlement
    # pipeline has no job left and ends before the pool closes.
    await app[SERVICES].settlements.close()
    await app[SERVICES].clearing.close()
    # aiohttp cleans up after the requests in flight have finished (or were cancelled at
    # its shutdown timeout): what they submitted completes here, while the pool is open.
    for batcher in app[SERVICES].batchers:
        await batcher.close()


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    async def loop() -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                await app[SERVICES].terminal_auth.purge_expired()
                await app[SERVICES].operators.purge_expired()
                window = dt.timedelta(seconds=2 * app[SETTINGS].signature_window)
                await app[SERVICES].gateway_clients.purge_expired(window)
                retention = dt.timedelta(days=app[SETTINGS].gateway_message_retention_days)
                await app[SERVICES].gateway.messages.purge(retention)
            except Exception:
                log.exception("housekeeping_failed")

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _audit_anchoring(app: web.Application) -> AsyncIterator[None]:
    """Anchor the audit chains every CARDSVC_AUDIT_ANCHOR_INTERVAL seconds (0: not here)."""
    if app[SETTINGS].audit_anchor_interval <= 0:
        yield
        return
    task = asyncio.create_task(app[SERVICES].audit_anchors.run_periodically())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _monitoring(app: web.Application) -> AsyncIterator[None]:
    """Event-loop lag, pool use, dependency health and garbage-collector pauses for the
    gauges (cardsvc/ops); what start-up made is frozen out of the collector's walks."""
    task = asyncio.create_task(Health(app[POOL], app[HSM]).monitor())
    gcpause.freeze_startup_objects()
    gcpause.watch()
    yield
    gcpause.unwatch()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[middleware.request_context, middleware.errors],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app.cleanup_ctx.extend([_database, _data_key, _hsm, _services, _housekeeping, _audit_anchoring])
    app.cleanup_ctx.append(_monitoring)
    setup_routes(app)
    return app
