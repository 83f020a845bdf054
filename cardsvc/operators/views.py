"""Operator routes: sign-in and the console session, operators, their API tokens."""

from __future__ import annotations

import re

from aiohttp import web

from cardsvc.errors import InvalidRequest
from cardsvc.operators.models import (
    OPERATOR_ID_PATTERN,
    TOKEN_ID_PATTERN,
    ChangePassword,
    CreateOperator,
    CreateToken,
    LoginRequest,
    ResetPassword,
    UpdateOperator,
)
from cardsvc.operators.services import SORTS
from cardsvc.web.appkeys import CALLER, OPERATOR_SESSION, POOL, SERVICES, SETTINGS
from cardsvc.web.auth import SESSION_COOKIE, operator, operator_session, public
from cardsvc.web.codec import json_response, read_json

_OPERATOR_ID = re.compile(OPERATOR_ID_PATTERN)
_TOKEN_ID = re.compile(TOKEN_ID_PATTERN)
_PAGE = re.compile(r"^[0-9]{1,6}$")


def _id(request: web.Request, name: str, pattern: re.Pattern[str]) -> str:
    value = request.match_info[name]
    if not pattern.fullmatch(value):
        raise InvalidRequest(
            f"{name} is malformed", code="INVALID_PATH_PARAMETER", details={"parameter": name}
        )
    return value


def _query_int(request: web.Request, name: str, default: int, most: int) -> int:
    raw = request.query.get(name, str(default))
    if not _PAGE.fullmatch(raw) or not 1 <= int(raw) <= most:
        raise InvalidRequest(
            f"{name} must be 1-{most}", code="QUERY_INVALID", details={"parameter": name}
        )
    return int(raw)


def _client_address(request: web.Request) -> str:
    # The socket's peer, never a forwarded header (which the caller writes).
    return request.remote or "unknown"


def _set_cookie(request: web.Request, response: web.StreamResponse, secret: str) -> None:
    settings = request.app[SETTINGS]
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=settings.cookie_secure,
        max_age=settings.operator_session_max_seconds,
    )


@public
async def sign_in(request: web.Request) -> web.Response:
    req = await read_json(request, LoginRequest)
    info, secret = await request.app[SERVICES].operators.sign_in(
        req.login, req.password, _client_address(request)
    )
    response = json_response(info, status=201)
    _set_cookie(request, response, secret)
    return response


@operator_session
async def current(request: web.Request) -> web.Response:
    return json_response(request[OPERATOR_SESSION].info)


@operator_session
async def sign_out(request: web.Request) -> web.Response:
    await request.app[SERVICES].operators.sign_out(
        request[CALLER], request[OPERATOR_SESSION].secret
    )
    response = web.Response(status=204)
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


@operator_session
async def change_password(request: web.Request) -> web.Response:
    req = await read_json(request, ChangePassword)
    await request.app[SERVICES].operators.change_own_password(
        request[CALLER], request[OPERATOR_SESSION].secret, req, _client_address(request)
    )
    return web.Response(status=204)


@operator("administrator", bootstrap=True)
async def create(request: web.Request) -> web.Response:
    operators = request.app[SERVICES].operators
    if request[CALLER].kind == "bootstrap":
        await operators.refuse_closed_bootstrap(request.app[POOL])  # before the body is read
    req = await read_json(request, CreateOperator)
    created = await operators.create(request[CALLER], req)
    return json_response(created, status=201)


@operator("administrator")
async def list_operators(request: web.Request) -> web.Response:
    page = _query_int(request, "page", 1, 100_000)
    page_size = _query_int(request, "page_size", 50, 200)
    sort = request.query.get("sort", "login")
    if sort.removeprefix("-") not in SORTS:
        raise InvalidRequest(
            f"sort must be one of {', '.join(SORTS)} (- before it: descending)",
            code="QUERY_INVALID",
            details={"parameter": "sort"},
        )
    return json_response(await request.app[SERVICES].operators.page(page, page_size, sort))


@operator("administrator")
async def get(request: web.Request) -> web.Response:
    operator_id = _id(request, "operator_id", _OPERATOR_ID)
    return json_response(await request.app[SERVICES].operators.get(operator_id))


@operator("administrator")
async def update(request: web.Request) -> web.Response:
    operator_id = _id(request, "operator_id", _OPERATOR_ID)
    req = await read_json(request, UpdateOperator)
    return json_response(
        await request.app[SERVICES].operators.update(request[CALLER], operator_id, req)
    )


@operator("administrator")
async def reset_password(request: web.Request) -> web.Response:
    operator_id = _id(request, "operator_id", _OPERATOR_ID)
    req = await read_json(request, ResetPassword)
    await request.app[SERVICES].operators.reset_password(request[CALLER], operator_id, req.password)
    return web.Response(status=204)


# Tokens: an administrator's for anyone, any operator's for itself (checked by the service).
@operator("administrator", "clerk", "reviewer", "auditor")
async def create_token(request: web.Request) -> web.Response:
    operator_id = _id(request, "operator_id", _OPERATOR_ID)
    req = await read_json(request, CreateToken)
    token = await request.app[SERVICES].operators.create_token(request[CALLER], operator_id, req)
    return json_response(token, status=201)


@operator("administrator", "clerk", "reviewer", "auditor")
async def list_tokens(request: web.Request) -> web.Response:
    operator_id = _id(request, "operator_id", _OPERATOR_ID)
    return json_response(await request.app[SERVICES].operators.tokens(request[CALLER], operator_id))


@operator("administrator", "clerk", "reviewer", "auditor")
async def revoke_token(request: web.Request) -> web.Response:
    operator_id = _id(request, "operator_id", _OPERATOR_ID)
    token_id = _id(request, "token_id", _TOKEN_ID)
    await request.app[SERVICES].operators.revoke_token(request[CALLER], operator_id, token_id)
    return web.Response(status=204)
