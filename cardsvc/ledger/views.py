from __future__ import annotations

from aiohttp import web

from cardsvc.web.appkeys import SERVICES
from cardsvc.web.auth import operator
from cardsvc.web.codec import json_response
from cardsvc.web.middleware import long_running


@long_running
@operator("auditor")
async def proof(request: web.Request) -> web.Response:
    return json_response(await request.app[SERVICES].ledger.prove())
