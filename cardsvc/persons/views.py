from __future__ import annotations

from aiohttp import web

from cardsvc.persons.models import CreatePerson, EnrolInsurance
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
