"""The request bound: every route has CARDSVC_REQUEST_TIMEOUT, a route marked
``long_running`` has CARDSVC_LONG_REQUEST_TIMEOUT instead."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cardsvc.config import Settings
from cardsvc.web import middleware
from cardsvc.web.appkeys import SETTINGS

pytestmark = pytest.mark.asyncio


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(0.3)
    return web.json_response({"ok": True})


@middleware.long_running
async def _slow_but_long_running(request: web.Request) -> web.Response:
    return await _slow(request)


async def test_long_running_routes_have_the_long_bound():
    app = web.Application(middlewares=[middleware.errors])
    app[SETTINGS] = Settings(
        admin_token="x" * 16, data_key=b"\0" * 32, request_timeout=0.1, long_request_timeout=5
    )
    app.router.add_get("/short", _slow)
    app.router.add_get("/long", _slow_but_long_running)
    async with TestClient(TestServer(app)) as client:
        short = await client.get("/short")
        assert short.status == 503
        assert (await short.json())["error"]["code"] == "REQUEST_TIMEOUT"
        long = await client.get("/long")
        assert long.status == 200 and await long.json() == {"ok": True}
