from __future__ import annotations

from aiohttp import web

from cardsvc.reconciliation.models import DETAIL_MAX_BODY, DetailRequest, StatementRequest
from cardsvc.web.appkeys import CALLER, SERVICES
from cardsvc.web.auth import terminal
from cardsvc.web.caller import SETTLING_TERMINALS
from cardsvc.web.codec import body_limit, json_response, read_json


@terminal(*SETTLING_TERMINALS)
async def statement(request: web.Request) -> web.Response:
    req = await read_json(request, StatementRequest)
    code = request[CALLER].facility()
    return json_response(await request.app[SERVICES].reconciliation.statement(code, req))


@body_limit(DETAIL_MAX_BODY)
@terminal(*SETTLING_TERMINALS)
async def detail(request: web.Request) -> web.Response:
    req = await read_json(request, DetailRequest)
    code = request[CALLER].facility()
    return json_response(await request.app[SERVICES].reconciliation.detail(code, req))
