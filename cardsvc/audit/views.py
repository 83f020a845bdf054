from __future__ import annotations

from aiohttp import web

from cardsvc import clock, paging
from cardsvc.audit.entries import AUDIT_SORTS, DEFAULT_DAYS, AuditFilter
from cardsvc.web.appkeys import SERVICES
from cardsvc.web.auth import operator
from cardsvc.web.codec import json_response
from cardsvc.web.middleware import long_running


@long_running
@operator("auditor")
async def verify(request: web.Request) -> web.Response:
    return json_response(await request.app[SERVICES].audit_anchors.verify())


@operator("administrator", "auditor")
async def anchor(request: web.Request) -> web.Response:
    return json_response(await request.app[SERVICES].audit_anchors.anchor(), status=201)


@operator("auditor")
async def entries(request: web.Request) -> web.Response:
    query = request.query
    start, end = paging.recent_range(query, clock.business_date(), DEFAULT_DAYS)
    filters = AuditFilter(
        start=start,
        end=end,
        actor=paging.text(query, "actor"),
        action=paging.text(query, "action"),
        object_type=paging.text(query, "object_type"),
        object_id=paging.text(query, "object_id"),
    )
    page = paging.parse_page(query, AUDIT_SORTS)
    return json_response(await request.app[SERVICES].audit_entries.search(filters, page))
