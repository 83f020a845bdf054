from __future__ import annotations

import datetime as dt

from aiohttp import web

from cardsvc.clearing.models import RunClearing
from cardsvc.web.appkeys import SERVICES
from cardsvc.web.auth import admin_only
from cardsvc.web.codec import json_response, path_date, path_param, read_json


def _date(request: web.Request) -> dt.date:
    return path_date(request, "clearing_date")


@admin_only
async def run(request: web.Request) -> web.Response:
    req = await read_json(request, RunClearing)
    return json_response(await request.app[SERVICES].clearing.run(req.clearing_date))


@admin_only
async def get(request: web.Request) -> web.Response:
    return json_response(await request.app[SERVICES].clearing.get(_date(request)))


@admin_only
async def file(request: web.Request) -> web.Response:
    code = path_param(request, "fixmedins_code")
    content = await request.app[SERVICES].clearing.file(_date(request), code)
    return web.Response(text=content, content_type="text/csv", charset="utf-8")
