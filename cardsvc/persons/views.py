from __future__ import annotations

from aiohttp import web

from cardsvc import paging
from cardsvc.persons.models import CreatePerson, EnrolInsurance
from cardsvc.persons.search import PERSON_SORTS
from cardsvc.web.appkeys import CALLER, SERVICES
from cardsvc.web.auth import operator
from cardsvc.web.codec import json_response, path_param, read_json


@operator("clerk")
async def create(request: web.Request) -> web.Response:
    req = await read_json(request, CreatePerson)
    return json_response(
        await request.app[SERVICES].persons.create(request[CALLER], req), status=201
    )


@operator("clerk")
async def get(request: web.Request) -> web.Response:
    return json_response(await request.app[SERVICES].persons.get(path_param(request, "psn_no")))


@operator("clerk")
async def enrol(request: web.Request) -> web.Response:
    req = await read_json(request, EnrolInsurance)
    person = await request.app[SERVICES].persons.enrol(
        request[CALLER], path_param(request, "psn_no"), req
    )
    return json_response(person)


@operator("clerk")
async def search(request: web.Request) -> web.Response:
    q = paging.text(request.query, "q")
    page = paging.parse_page(request.query, PERSON_SORTS)
    PERSON_SORTS.check_cost(page, q is not None, "q")
    return json_response(await request.app[SERVICES].person_search.search(q, page))


@operator("clerk")
async def overview(request: web.Request) -> web.Response:
    psn_no = path_param(request, "psn_no")
    return json_response(await request.app[SERVICES].person_search.overview(psn_no))
