from __future__ import annotations

import re

from aiohttp import web

from cardsvc import paging
from cardsvc.errors import InvalidRequest
from cardsvc.reports.models import REPORT_ID_PATTERN, PublishReport
from cardsvc.reports.services import REPORT_SORTS
from cardsvc.reports.snapshot import report_csv
from cardsvc.web.appkeys import CALLER, SERVICES
from cardsvc.web.auth import operator, public
from cardsvc.web.codec import json_response, read_json

_REPORT_ID = re.compile(REPORT_ID_PATTERN)


def _report_id(request: web.Request) -> str:
    value = request.match_info["report_id"]
    if not _REPORT_ID.fullmatch(value):
        raise InvalidRequest(
            "report_id is malformed",
            code="INVALID_PATH_PARAMETER",
            details={"parameter": "report_id"},
        )
    return value


@operator("administrator")
async def publish(request: web.Request) -> web.Response:
    req = await read_json(request, PublishReport)
    report = await request.app[SERVICES].public_reports.publish(request[CALLER], req)
    return json_response(report, status=201)


@operator("administrator")
async def published(request: web.Request) -> web.Response:
    page = paging.parse_page(request.query, REPORT_SORTS)
    return json_response(await request.app[SERVICES].public_reports.search(page))


@public
async def public_list(request: web.Request) -> web.Response:
    page = paging.parse_page(request.query, REPORT_SORTS)
    return json_response(await request.app[SERVICES].public_reports.search(page))


@public
async def public_get(request: web.Request) -> web.Response:
    return json_response(await request.app[SERVICES].public_reports.get(_report_id(request)))


@public
async def public_csv(request: web.Request) -> web.Response:
    report_id = _report_id(request)
    report = await request.app[SERVICES].public_reports.get(report_id)
    return web.Response(
        text=report_csv(report),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="fund-report-{report_id}.csv"'},
    )
