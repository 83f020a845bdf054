from __future__ import annotations

from aiohttp import web

from cardsvc.accounts.models import CreditBatch
from cardsvc.web.appkeys import CALLER, SERVICES
from cardsvc.web.auth import operator
from cardsvc.web.codec import json_response, read_json


@operator("clerk")
async def credit(request: web.Request) -> web.Response:
    req = await read_json(request, CreditBatch)
    return json_response(await request.app[SERVICES].account_credits.credit(request[CALLER], req))
