from __future__ import annotations

from aiohttp import web

from cardsvc import paging
from cardsvc.terminals.listing import TERMINAL_SORTS, TerminalFilter
from cardsvc.terminals.models import (
    RegisterTerminal,
    SignInComplete,
    SignInStart,
    UpdateTerminal,
)
from cardsvc.types import FACILITY_CODE_PATTERN
from cardsvc.web.appkeys import CALLER, SERVICES
from cardsvc.web.auth import operator, public
from cardsvc.web.caller import ANY_TERMINAL
from cardsvc.web.codec import json_response, path_param, read_json


@operator("administrator")
async def register(request: web.Request) -> web.Response:
    req = await read_json(request, RegisterTerminal)
    return json_response(
        await request.app[SERVICES].terminals.register(request[CALLER], req), status=201
    )


@operator("administrator")
async def update(request: web.Request) -> web.Response:
    req = await read_json(request, UpdateTerminal)
    terminal_id = path_param(request, "terminal_id")
    return json_response(
        await request.app[SERVICES].terminals.set_status(request[CALLER], terminal_id, req)
    )


@public
async def sign_in(request: web.Request) -> web.Response:
    req = await read_json(request, SignInStart)
    client = request.remote or ""  # the socket's peer: no forwarded header is trusted
    return json_response(await request.app[SERVICES].sign_in.start(req.terminal_id, client))


@public
async def sign_in_complete(request: web.Request) -> web.Response:
    req = await read_json(request, SignInComplete)
    client = request.remote or ""  # the socket's peer: no forwarded header is trusted
    return json_response(await request.app[SERVICES].sign_in.complete(req, client))


@operator("administrator")
async def search(request: web.Request) -> web.Response:
    query = request.query
    filters = TerminalFilter(
        fixmedins_code=paging.pattern(query, "fixmedins_code", FACILITY_CODE_PATTERN),
        kind=paging.choice(query, "kind", ANY_TERMINAL),
        status=paging.choice(query, "status", ("active", "disabled")),
    )
    page = paging.parse_page(query, TERMINAL_SORTS)
    return json_response(await request.app[SERVICES].terminal_list.search(filters, page))
