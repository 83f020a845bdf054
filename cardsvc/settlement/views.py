from __future__ import annotations

import re

import structlog
from aiohttp import web

from cardsvc import paging
from cardsvc.errors import CardsvcError, InvalidRequest
from cardsvc.ops import metrics
from cardsvc.settlement.listing import (
    AMOUNT_SORT_NEEDS,
    SETTLEMENT_SORTS,
    STATUSES,
    SettlementFilter,
    narrowed,
)
from cardsvc.settlement.models import AdminReversalRequest, ReverseRequest, SettleRequest
from cardsvc.types import FACILITY_CODE_PATTERN, PSN_NO_PATTERN
from cardsvc.web.appkeys import CALLER, SERVICES
from cardsvc.web.auth import operator, operator_or_terminal, terminal
from cardsvc.web.caller import SETTLING_TERMINALS
from cardsvc.web.codec import json_response, path_param, read_json

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{8,128}$")


def _idempotency_key(request: web.Request) -> str:
    key = request.headers.get("Idempotency-Key", "")
    if not _IDEMPOTENCY_KEY.match(key):
        raise InvalidRequest(
            "the Idempotency-Key header is required: 8-128 printable ASCII characters",
            code="IDEMPOTENCY_KEY_REQUIRED",
        )
    return key


@terminal(*SETTLING_TERMINALS)
async def preview(request: web.Request) -> web.Response:
    req = await read_json(request, SettleRequest)
    return json_response(await request.app[SERVICES].settlements.preview(request[CALLER], req))


@terminal(*SETTLING_TERMINALS, admit_in_handler=True)
async def settle(request: web.Request) -> web.Response:
    try:
        key = _idempotency_key(request)
        req = await read_json(request, SettleRequest)
        result = await request.app[SERVICES].settlements.settle(request[CALLER], key, req)
    except CardsvcError as exc:
        metrics.SETTLEMENTS.labels("refused", exc.code).inc()
        raise
    metrics.SETTLEMENTS.labels("settled", "").inc()
    structlog.contextvars.bind_contextvars(setl_id=result.setl_id)  # on the request's log line
    return json_response(result)


@operator_or_terminal(roles=("clerk", "reviewer", "auditor"), kinds=SETTLING_TERMINALS)
async def get(request: web.Request) -> web.Response:
    setl_id = path_param(request, "setl_id")
    return json_response(await request.app[SERVICES].settlements.get(request[CALLER], setl_id))


@terminal(*SETTLING_TERMINALS)
async def reverse(request: web.Request) -> web.Response:
    setl_id = path_param(request, "setl_id")
    structlog.contextvars.bind_contextvars(setl_id=setl_id)
    req = await read_json(request, ReverseRequest, default=ReverseRequest())
    reversal = await request.app[SERVICES].settlements.reverse(request[CALLER], setl_id, req.reason)
    return json_response(reversal)


@operator("administrator")
async def admin_reverse(request: web.Request) -> web.Response:
    """The same full reversal as the facility's, by the administrator, with a reason."""
    setl_id = path_param(request, "setl_id")
    structlog.contextvars.bind_contextvars(setl_id=setl_id)
    req = await read_json(request, AdminReversalRequest)
    reversal = await request.app[SERVICES].settlements.reverse(request[CALLER], setl_id, req.reason)
    return json_response(reversal)


@operator("clerk", "reviewer", "auditor")
async def search(request: web.Request) -> web.Response:
    query = request.query
    start, end = paging.date_range(query)
    filters = SettlementFilter(
        psn_no=paging.pattern(query, "psn_no", PSN_NO_PATTERN),
        fixmedins_code=paging.pattern(query, "fixmedins_code", FACILITY_CODE_PATTERN),
        start=start,
        end=end,
        status=paging.choice(query, "status", STATUSES),
    )
    page = paging.parse_page(query, SETTLEMENT_SORTS)
    SETTLEMENT_SORTS.check_cost(page, narrowed(filters), AMOUNT_SORT_NEEDS)
    return json_response(await request.app[SERVICES].settlement_list.search(filters, page))
