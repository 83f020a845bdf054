from __future__ import annotations

import datetime as dt

from aiohttp import web

from cardsvc import paging
from cardsvc.clearing.listing import RUN_SORTS
from cardsvc.clearing.models import ClearingRun, ClearingRunning, RunClearing
from cardsvc.web.appkeys import CALLER, SERVICES
from cardsvc.web.auth import operator
from cardsvc.web.codec import json_response, path_date, path_param, read_json
from cardsvc.web.middleware import long_running


def _date(request: web.Request) -> dt.date:
    return path_date(request, "clearing_date")


def _answer(found: ClearingRun | ClearingRunning) -> web.Response:
    """200 with the run once it is stored; 202 while it runs, pointing at where to look."""
    if isinstance(found, ClearingRunning):
        response = json_response(found, status=202)
        response.headers["Location"] = f"/v1/clearing/runs/{found.clearing_date.isoformat()}"
        return response
    return json_response(found)


@operator("administrator", "auditor")
async def runs(request: web.Request) -> web.Response:
    start, end = paging.date_range(request.query)
    page = paging.parse_page(request.query, RUN_SORTS)
    return json_response(await request.app[SERVICES].clearing_runs.search(start, end, page))


@operator("administrator")
async def run(request: web.Request) -> web.Response:
    req = await read_json(request, RunClearing)
    return _answer(await request.app[SERVICES].clearing.start(request[CALLER], req.clearing_date))


@operator("administrator", "auditor")
async def get(request: web.Request) -> web.Response:
    return _answer(await request.app[SERVICES].clearing.status(_date(request)))


@long_running  # a facility's day of 100,000 settlements, to a slow client
@operator("administrator", "auditor")
async def file(request: web.Request) -> web.StreamResponse:
    code, day = path_param(request, "fixmedins_code"), _date(request)
    chunks = await request.app[SERVICES].clearing.file(day, code)
    # The code is [A-Za-z0-9] only (path_param): safe inside the quoted file name.
    name = f"clearing-{day.isoformat()}-{code}.csv"
    # Streamed: a facility's day can be 100,000 settlements. No BOM (all ASCII).
    response = web.StreamResponse(headers={"Content-Disposition": f'attachment; filename="{name}"'})
    response.content_type, response.charset = "text/csv", "utf-8"
    await response.prepare(request)
    try:
        async for chunk in chunks:
            await response.write(chunk)
    except BaseException:
        # The status is sent: no error answer can follow. Cut the connection, so the
        # client sees an unfinished download (no totals), never a short file that looks whole.
        if request.transport is not None:
            request.transport.abort()
        raise
    await response.write_eof()
    return response
