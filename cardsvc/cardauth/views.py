from __future__ import annotations

from aiohttp import web

from cardsvc.cardauth.models import ChallengeRequest, VerifyRequest
from cardsvc.web.appkeys import CALLER, SERVICES
from cardsvc.web.auth import terminal
from cardsvc.web.caller import ANY_TERMINAL
from cardsvc.web.codec import json_response, read_json


@terminal(*ANY_TERMINAL)
async def challenge(request: web.Request) -> web.Response:
    req = await read_json(request, ChallengeRequest)
    return json_response(await request.app[SERVICES].card_auth.challenge(request[CALLER], req))


@terminal(*ANY_TERMINAL)
async def verify(request: web.Request) -> web.Response:
    req = await read_json(request, VerifyRequest)
    return json_response(await request.app[SERVICES].card_auth.verify(request[CALLER], req))
