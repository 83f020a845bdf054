from __future__ import annotations

from aiohttp import web

from cardsvc.facilities.models import CreateFacility, UpdateFacility
from cardsvc.web.appkeys import SERVICES
from cardsvc.web.auth import admin_only
from cardsvc.web.codec import json_response, path_param, read_json


@admin_only
async def create(request: web.Request) -> web.Response:
    req = await read_json(request, CreateFacility)
    return json_response(await request.app[SERVICES].facilities.create(req), status=201)


@admin_only
async def update(request: web.Request) -> web.Response:
    req = await read_json(request, UpdateFacility)
    code = path_param(request, "fixmedins_code")
    return json_response(await request.app[SERVICES].facilities.update(code, req))


@admin_only
async def get(request: web.Request) -> web.Response:
    code = path_param(request, "fixmedins_code")
    return json_response(await request.app[SERVICES].facilities.get(code))
