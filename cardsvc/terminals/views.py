from __future__ import annotations

from aiohttp import web

from cardsvc.terminals.models import (
    RegisterTerminal,
    SignInComplete,
    SignInStart,
    UpdateTerminal,
)
from cardsvc.web.appkeys import SERVICES
from cardsvc.web.auth import admin_only, public
from cardsvc.web.codec import json_response, path_param, read_json


@admin_only
async def register(request: web.Request) -> web.Response:
    req = await read_json(request, RegisterTerminal)
    return json_response(await request.app[SERVICES].terminals.register(req), status=201)


@admin_only
async def update(request: web.Request) -> web.Response:
    req = await read_json(request, UpdateTerminal)
    terminal_id = path_param(request, "terminal_id")
    return json_response(await request.app[SERVICES].terminals.set_status(terminal_id, req))


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
