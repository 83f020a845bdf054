from __future__ import annotations

import datetime as dt
from typing import Literal

from aiohttp import web

from cardsvc import clock
from cardsvc.errors import InvalidRequest
from cardsvc.settlement.flags import FLAG_RULES
from cardsvc.supervision.models import Decision
from cardsvc.supervision.services import report_csv
from cardsvc.web.appkeys import CALLER, SERVICES
from cardsvc.web.auth import operator
from cardsvc.web.codec import (
    json_response,
    path_param,
    query_choice,
    query_date,
    query_limit,
    read_json,
)


@operator("reviewer", "auditor")
async def flags(request: web.Request) -> web.Response:
    since = query_date(request, "since", clock.business_date())
    start = dt.datetime.combine(since, dt.time(), clock.BUSINESS_TZ)
    rule = request.query.get("rule")
    if rule is not None and rule not in FLAG_RULES:
        raise InvalidRequest(
            f"rule must be one of {', '.join(FLAG_RULES)}",
            code="INVALID_QUERY",
            details={"parameter": "rule"},
        )
    result = await request.app[SERVICES].supervision.flags(start, rule, query_limit(request))
    return json_response(result)


@operator("reviewer")
async def reviews(request: web.Request) -> web.Response:
    return json_response(
        await request.app[SERVICES].supervision.pending_reviews(query_limit(request))
    )


@operator("reviewer")
async def decide(request: web.Request) -> web.Response:
    setl_id = path_param(request, "setl_id")
    decision: Literal["approved", "rejected"] = (
        "approved" if request.match_info["decision"] == "approve" else "rejected"
    )
    req = await read_json(request, Decision, default=Decision())
    return json_response(
        await request.app[SERVICES].supervision.decide(request[CALLER], setl_id, decision, req.note)
    )


@operator("administrator", "reviewer", "auditor")
async def fund_report(request: web.Request) -> web.Response:
    today = clock.business_date()
    start = query_date(request, "from", today.replace(day=1))
    end = query_date(request, "to", today)
    fmt = query_choice(request, "format", ("json", "csv"))
    report = await request.app[SERVICES].supervision.fund_report(start, end)
    if fmt == "csv":
        return web.Response(text=report_csv(report), content_type="text/csv", charset="utf-8")
    return json_response(report)
