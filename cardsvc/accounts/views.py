from __future__ import annotations

from aiohttp import web

from cardsvc.accounts.models import CreditBatch
from cardsvc.web.appkeys import SERVICES
from cardsvc.web.auth import admin_only
from cardsvc.web.codec import json_response, read_json


@admin_only
async def credit(request: web.Request) -> web.Response:
    req = await read_json(request, CreditBatch)
    return json_response(await request.app[SERVICES].account_credits.credit(req))
