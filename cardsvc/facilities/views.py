from __future__ import annotations

from aiohttp import web

from cardsvc.facilities.models import CreateFacility, UpdateFacility
from cardsvc.web.appkeys import CALLER, SERVICES
from cardsvc.web.auth import operator
from cardsvc.web.codec import json_response, path_param, read_json


@operator("administrator")
async def create(request: web.Request) -> web.Response:
    req = await read_json(request, CreateFacility)
    return json_response(
        await request.app[SERVICES].facilities.create(request[CALLER], req), status=201
    )


@operator("administrator")
async def update(request: web.Request) -> web.Response:
    req = await read_json(request, UpdateFacility)
    code = path_param(request, "fixmedins_code")
    return json_response(await request.app[SERVICES].facilities.update(request[CALLER], code, req))


@operator("administrator", "clerk", "reviewer", "auditor")
async def get(request: web.Request) -> web.Response:
    code = path_param(request, "fixmedins_code")
    return json_response(await request.app[SERVICES].facilities.get(code))
