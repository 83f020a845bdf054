from __future__ import annotations

import re

from aiohttp import web

from cardsvc.catalog.models import ITEM_CODE_PATTERN, CatalogQuery, PutItems
from cardsvc.errors import InvalidRequest
from cardsvc.operators.models import ROLES as ALL_ROLES
from cardsvc.web.appkeys import CALLER, SERVICES
from cardsvc.web.auth import operator, operator_or_terminal
from cardsvc.web.caller import ANY_TERMINAL
from cardsvc.web.codec import json_response, query_limit, read_json

_CODE = re.compile(ITEM_CODE_PATTERN)
# With the other parameters at their longest the request line stays under aiohttp's 8190
# bytes (a longer one is refused before any handler can answer).
MAX_CODES = 100
_NAME = re.compile(r"^[^\x00-\x1f]{1,200}$")


@operator("administrator")
async def put_items(request: web.Request) -> web.Response:
    req = await read_json(request, PutItems)
    return json_response(await request.app[SERVICES].catalog.upsert(request[CALLER], req))


@operator_or_terminal(roles=ALL_ROLES, kinds=ANY_TERMINAL)
async def list_items(request: web.Request) -> web.Response:
    query = CatalogQuery(
        limit=query_limit(request),
        after=_query(request, "after", _CODE, "an item code"),
        codes=_codes(request),
        prefix=_query(request, "prefix", _CODE, "the beginning of an item code"),
        name=_query(request, "name", _NAME, "1-200 characters of a name"),
    )
    return json_response(await request.app[SERVICES].catalog.page(query))


def _query(request: web.Request, name: str, pattern: re.Pattern[str], what: str) -> str | None:
    raw = request.query.get(name)
    if raw is not None and not pattern.fullmatch(raw):
        raise InvalidRequest(
            f"{name} must be {what}", code="INVALID_QUERY", details={"parameter": name}
        )
    return raw


def _codes(request: web.Request) -> list[str] | None:
    """``code=A&code=B``: exactly these codes (at most ``MAX_CODES``)."""
    codes = request.query.getall("code", [])
    if len(codes) > MAX_CODES or not all(_CODE.fullmatch(code) for code in codes):
        raise InvalidRequest(
            f"code must be an item code, at most {MAX_CODES} of them",
            code="INVALID_QUERY",
            details={"parameter": "code"},
        )
    return codes or None
