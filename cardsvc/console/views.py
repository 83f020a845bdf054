"""The console's and the public page's static files. Everything they show comes from the
/v1 API (the console, with the operator's session) or /public/reports (the public page)."""

from __future__ import annotations

from aiohttp import web

from cardsvc.console import assets
from cardsvc.web.auth import public


def _answer(body: bytes, content_type: str) -> web.Response:
    return web.Response(
        body=body, content_type=content_type, charset="utf-8", headers=assets.HEADERS
    )


@public
async def console(request: web.Request) -> web.Response:
    return _answer(assets.page(assets.CONSOLE_PAGE), "text/html")


@public
async def public_page(request: web.Request) -> web.Response:
    return _answer(assets.page(assets.PUBLIC_PAGE), "text/html")


@public
async def static(request: web.Request) -> web.Response:
    body, content_type = assets.asset(request.match_info["asset"])
    return _answer(body, content_type)
