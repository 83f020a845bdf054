from __future__ import annotations

from aiohttp import web

from cardsvc.catalog.models import PutItems
from cardsvc.web.appkeys import SERVICES
from cardsvc.web.auth import admin_only
from cardsvc.web.codec import json_response, read_json


@admin_only
async def put_items(request: web.Request) -> web.Response:
    req = await read_json(request, PutItems)
    return json_response(await request.app[SERVICES].catalog.upsert(req))
