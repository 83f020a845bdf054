"""Liveness, readiness and metrics."""

from __future__ import annotations

from aiohttp import web

from cardsvc import db
from cardsvc.errors import ServiceUnavailable
from cardsvc.hsm.client import HsmClient
from cardsvc.ops import metrics
from cardsvc.web.appkeys import HSM, POOL
from cardsvc.web.auth import public
from cardsvc.web.codec import json_response


@public
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _hsm_reachable(hsm: HsmClient) -> bool:
    try:
        return await hsm.echo(b"ready") == b"ready"
    except ServiceUnavailable:
        return False


@public
async def readyz(request: web.Request) -> web.Response:
    database = await db.ping(request.app[POOL])
    hsm = await _hsm_reachable(request.app[HSM])
    status = 200 if database and hsm else 503
    return json_response(
        {"status": "ok" if status == 200 else "unavailable", "database": database, "hsm": hsm},
        status=status,
    )


@public
async def prometheus(request: web.Request) -> web.Response:
    return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8")
