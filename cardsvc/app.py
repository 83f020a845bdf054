"""The application factory: settings in, a wired aiohttp application out.

Resources (database pool, HSM client, periodic housekeeping) are opened and closed in
``cleanup_ctx`` generators, in order, so a failed start closes what was opened.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from cardsvc import db
from cardsvc.config import Settings
from cardsvc.hsm.client import HsmClient
from cardsvc.hsm.tls import hsm_tls
from cardsvc.routes import setup_routes
from cardsvc.services import build_services
from cardsvc.web import middleware
from cardsvc.web.appkeys import HSM, POOL, SERVICES, SETTINGS

log = structlog.get_logger(__name__)

HOUSEKEEPING_SECONDS = 60.0


async def _database(app: web.Application) -> AsyncIterator[None]:
    app[POOL] = await db.create_pool(app[SETTINGS])
    yield
    await app[POOL].close()


async def _hsm(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    client = HsmClient(
        settings.hsm_host,
        settings.hsm_port,
        tls=hsm_tls(settings),
        connections=settings.hsm_connections,
        timeout=settings.hsm_timeout,
    )
    await client.start()
    app[HSM] = client
    yield
    await client.close()


async def _services(app: web.Application) -> AsyncIterator[None]:
    app[SERVICES] = build_services(app[SETTINGS], app[POOL], app[HSM])
    yield
    await app[SERVICES].clearing.close()


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    async def loop() -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                await app[SERVICES].terminal_auth.purge_expired()
            except Exception:
                log.exception("housekeeping_failed")

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[middleware.request_context, middleware.errors],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app.cleanup_ctx.extend([_database, _hsm, _services, _housekeeping])
    setup_routes(app)
    return app
