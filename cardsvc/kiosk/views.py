from __future__ import annotations

from aiohttp import web

from cardsvc.kiosk.models import KioskRequest
from cardsvc.web.appkeys import CALLER, SERVICES
from cardsvc.web.auth import terminal
from cardsvc.web.codec import json_response, read_json


@terminal("kiosk")
async def summary(request: web.Request) -> web.Response:
    req = await read_json(request, KioskRequest)
    return json_response(await request.app[SERVICES].kiosk.summary(request[CALLER], req.card_token))


@terminal("kiosk")
async def report_loss(request: web.Request) -> web.Response:
    req = await read_json(request, KioskRequest)
    card = await request.app[SERVICES].kiosk.report_loss(request[CALLER], req.card_token)
    return json_response(card)
