from __future__ import annotations

import re
from typing import Literal

from aiohttp import web

from cardsvc import clock, paging
from cardsvc.errors import InvalidRequest
from cardsvc.settlement.flags import FLAG_RULES
from cardsvc.supervision.models import Decision, HandleFlag
from cardsvc.supervision.services import (
    FLAG_SORT_NEEDS,
    FLAG_SORTS,
    REVIEW_SORTS,
    REVIEW_STATUSES,
    FlagFilter,
    flags_narrowed,
    report_csv,
)
from cardsvc.types import FACILITY_CODE_PATTERN
from cardsvc.web.appkeys import CALLER, SERVICES
from cardsvc.web.auth import operator
from cardsvc.web.codec import json_response, path_param, query_choice, query_date, read_json

_FLAG_ID = re.compile(r"^[1-9][0-9]{0,17}$")


@operator("reviewer", "auditor")
async def flags(request: web.Request) -> web.Response:
    query = request.query
    start, end = paging.date_range(query)
    filters = FlagFilter(
        rule=paging.choice(query, "rule", tuple(FLAG_RULES)),
        fixmedins_code=paging.pattern(query, "fixmedins_code", FACILITY_CODE_PATTERN),
        handled=paging.flag(query, "handled"),
        start=start,
        end=end,
    )
    page = paging.parse_page(query, FLAG_SORTS)
    FLAG_SORTS.check_cost(page, flags_narrowed(filters), FLAG_SORT_NEEDS)
    return json_response(await request.app[SERVICES].supervision.flags(filters, page))


@operator("reviewer")
async def handle_flag(request: web.Request) -> web.Response:
    raw = request.match_info["flag_id"]
    if not _FLAG_ID.fullmatch(raw):
        raise InvalidRequest(
            "flag_id is malformed", code="INVALID_PATH_PARAMETER", details={"parameter": "flag_id"}
        )
    req = await read_json(request, HandleFlag)
    flag = await request.app[SERVICES].supervision.handle_flag(request[CALLER], int(raw), req.note)
    return json_response(flag)


@operator("reviewer")
async def reviews(request: web.Request) -> web.Response:
    status = paging.choice(request.query, "status", REVIEW_STATUSES) or "pending"
    page = paging.parse_page(request.query, REVIEW_SORTS)
    return json_response(await request.app[SERVICES].supervision.reviews(status, page))


@operator("reviewer")
async def review(request: web.Request) -> web.Response:
    setl_id = path_param(request, "setl_id")
    return json_response(await request.app[SERVICES].supervision.review(setl_id))


@operator("reviewer")
async def decide(request: web.Request) -> web.Response:
    setl_id = path_param(request, "setl_id")
    decision: Literal["approved", "rejected"] = (
        "approved" if request.match_info["decision"] == "approve" else "rejected"
    )
    req = await read_json(request, Decision, default=Decision())
    return json_response(
        await request.app[SERVICES].supervision.decide(request[CALLER], setl_id, decision, req.text)
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
