from __future__ import annotations

from aiohttp import web

from cardsvc import paging
from cardsvc.facilities.models import ChangeCreditRating, CreateFacility, UpdateFacility
from cardsvc.facilities.services import FACILITY_SORTS, FacilityFilter
from cardsvc.web.appkeys import CALLER, SERVICES
from cardsvc.web.auth import operator
from cardsvc.web.codec import json_response, path_param, read_json


@operator("administrator")
async def create(request: web.Request) -> web.Response:
    req = await read_json(request, CreateFacility)
    return json_response(
        await request.app[SERVICES].facilities.create(request[CALLER], req), status=201
    )


@operator("administrator")
async def update(request: web.Request) -> web.Response:
    req = await read_json(request, UpdateFacility)
    code = path_param(request, "fixmedins_code")
    return json_response(await request.app[SERVICES].facilities.update(request[CALLER], code, req))


@operator("administrator", "clerk", "reviewer", "auditor")
async def get(request: web.Request) -> web.Response:
    code = path_param(request, "fixmedins_code")
    return json_response(await request.app[SERVICES].facilities.get(code))


@operator("administrator", "clerk", "reviewer", "auditor")
async def search(request: web.Request) -> web.Response:
    query = request.query
    filters = FacilityFilter(
        q=paging.text(query, "q"),
        type=paging.choice(query, "type", ("hospital", "pharmacy")),
        status=paging.choice(query, "status", ("active", "suspended")),
        credit_rating=paging.choice(query, "credit_rating", ("A", "B", "C", "D")),
    )
    page = paging.parse_page(query, FACILITY_SORTS)
    return json_response(await request.app[SERVICES].facility_ratings.search(filters, page))


@operator("reviewer")
async def change_rating(request: web.Request) -> web.Response:
    req = await read_json(request, ChangeCreditRating)
    code = path_param(request, "fixmedins_code")
    ratings = request.app[SERVICES].facility_ratings
    return json_response(await ratings.change_rating(request[CALLER], code, req))


@operator("administrator", "clerk", "reviewer", "auditor")
async def rating_history(request: web.Request) -> web.Response:
    code = path_param(request, "fixmedins_code")
    return json_response(await request.app[SERVICES].facility_ratings.rating_history(code))
