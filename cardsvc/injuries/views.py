from __future__ import annotations

from aiohttp import web

from cardsvc.injuries.models import CreateInjuryCase
from cardsvc.web.appkeys import CALLER, SERVICES
from cardsvc.web.auth import operator
from cardsvc.web.codec import json_response, read_json


@operator("clerk")
async def create(request: web.Request) -> web.Response:
    req = await read_json(request, CreateInjuryCase)
    return json_response(
        await request.app[SERVICES].injuries.create(request[CALLER], req), status=201
    )
