"""The gateway's endpoint and its clients' administration API: decode, call, encode."""

from __future__ import annotations

import re

from aiohttp import web

from cardsvc.errors import InvalidRequest
from cardsvc.national.dispatch import FILE, PayloadTooLarge, Reply
from cardsvc.national.models import CreateGatewayClient, UpdateGatewayClient
from cardsvc.types import FACILITY_CODE_PATTERN
from cardsvc.web.appkeys import CALLER, SERVICES, SETTINGS
from cardsvc.web.auth import gateway, operator
from cardsvc.web.codec import json_response, read_json

_CHUNK = 64 * 1024
_FACILITY = re.compile(FACILITY_CODE_PATTERN)


async def _read_bounded(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    return bytes(body)


def _response(reply: Reply) -> web.Response:
    # A file (9102) is saved, not shown; the HIS names it (it asked for it by name).
    file = {"Content-Disposition": "attachment"} if reply.content_type == FILE else {}
    return web.Response(
        body=reply.body,
        status=reply.status,
        content_type=reply.content_type,
        headers={**reply.headers, **file},
    )


@gateway
async def call_service(request: web.Request) -> web.Response:
    # The gateway reads the body only once the headers authenticate the request.
    limit = request.app[SETTINGS].gateway_max_body_bytes
    services = request.app[SERVICES]
    reply = await services.gateway.handle(
        services, request.headers, lambda: _read_bounded(request, limit)
    )
    return _response(reply)


@operator("administrator")
async def create_client(request: web.Request) -> web.Response:
    req = await read_json(request, CreateGatewayClient)
    return json_response(
        await request.app[SERVICES].gateway_clients.create(request[CALLER], req), status=201
    )


@operator("administrator")
async def list_clients(request: web.Request) -> web.Response:
    code = request.query.get("fixmedins_code")
    if code is not None and not _FACILITY.fullmatch(code):
        raise InvalidRequest(
            "fixmedins_code is malformed",
            code="INVALID_QUERY",
            details={"parameter": "fixmedins_code"},
        )
    return json_response(await request.app[SERVICES].gateway_clients.list(code))


@operator("administrator")
async def update_client(request: web.Request) -> web.Response:
    req = await read_json(request, UpdateGatewayClient)
    paasid = request.match_info["paasid"]
    return json_response(
        await request.app[SERVICES].gateway_clients.update(request[CALLER], paasid, req)
    )
