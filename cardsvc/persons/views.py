from __future__ import annotations

from aiohttp import web

from cardsvc import paging
from cardsvc.persons.models import CreatePerson, EnrolInsurance
from cardsvc.persons.search import PERSON_SORTS
from cardsvc.web.appkeys import SERVICES
from cardsvc.web.auth import admin_only
from cardsvc.web.codec import json_response, path_param, read_json


@admin_only
async def create(request: web.Request) -> web.Response:
    req = await read_json(request, CreatePerson)
    return json_response(await request.app[SERVICES].persons.create(req), status=201)


@admin_only
async def get(request: web.Request) -> web.Response:
    return json_response(await request.app[SERVICES].persons.get(path_param(request, "psn_no")))


@admin_only
async def enrol(request: web.Request) -> web.Response:
    req = await read_json(request, EnrolInsurance)
    person = await request.app[SERVICES].persons.enrol(path_param(request, "psn_no"), req)
    return json_response(person)


@admin_only  # roles: clerk
async def search(request: web.Request) -> web.Response:
    q = paging.text(request.query, "q")
    page = paging.parse_page(request.query, PERSON_SORTS)
    return json_response(await request.app[SERVICES].person_search.search(q, page))


@admin_only  # roles: clerk
async def overview(request: web.Request) -> web.Response:
    psn_no = path_param(request, "psn_no")
    return json_response(await request.app[SERVICES].person_search.overview(psn_no))
