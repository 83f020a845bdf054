"""Liveness, readiness, metrics, and the API description with its browser."""

from __future__ import annotations

from aiohttp import web

from cardsvc.ops import apidocs, gcpause, metrics
from cardsvc.ops.services import Health
from cardsvc.web.appkeys import HSM, POOL
from cardsvc.web.auth import public
from cardsvc.web.codec import json_response


@public
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@public
async def readyz(request: web.Request) -> web.Response:
    """200 while the database answers (the HSM down is ``degraded``, still 200), else 503."""
    ready = await Health(request.app[POOL], request.app[HSM]).readiness()
    return json_response(ready, status=200 if ready.serving else 503)


@public
async def prometheus(request: web.Request) -> web.Response:
    gcpause.flush()  # this worker's latest pauses (the others flush every monitor turn)
    return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8")


@public
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=apidocs.spec(), content_type="application/yaml", charset="utf-8")


@public
async def docs(request: web.Request) -> web.Response:
    response = web.Response(body=apidocs.page(), content_type="text/html", charset="utf-8")
    response.headers["Content-Security-Policy"] = apidocs.CSP
    return response


@public
async def docs_asset(request: web.Request) -> web.Response:
    body, content_type = apidocs.asset(request.match_info["asset"])
    return web.Response(body=body, content_type=content_type, headers=apidocs.ASSET_HEADERS)
