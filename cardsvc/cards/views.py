from __future__ import annotations

from aiohttp import web

from cardsvc.cards.lifecycle import CardAction
from cardsvc.cards.models import IssueCard, PinUnblockRequest
from cardsvc.web.appkeys import CALLER, SERVICES
from cardsvc.web.auth import operator, terminal
from cardsvc.web.codec import json_response, path_param, read_json

# The transitions that are a plain status change; replace issues a new card as well.
_SIMPLE = {a.value: a for a in CardAction if a is not CardAction.REPLACE}


@terminal("counter")
async def issue(request: web.Request) -> web.Response:
    req = await read_json(request, IssueCard)
    card = await request.app[SERVICES].cards.issue(request[CALLER], req.psn_no)
    return json_response(card, status=201)


@terminal("counter")
async def get(request: web.Request) -> web.Response:
    return json_response(await request.app[SERVICES].cards.get(path_param(request, "card_no")))


@terminal("counter")
async def transition(request: web.Request) -> web.Response:
    action = _SIMPLE[request.match_info["action"]]  # the route admits only these
    card = await request.app[SERVICES].cards.transition(
        request[CALLER], path_param(request, "card_no"), action
    )
    return json_response(card)


@operator("clerk")
async def person_card_transition(request: web.Request) -> web.Response:
    """The same status changes for a clerk (the console), on a card of the named person.
    A route of its own: an operator never acts through a terminal's route."""
    action = _SIMPLE[request.match_info["action"]]  # the route admits only these
    card = await request.app[SERVICES].cards.transition(
        request[CALLER],
        path_param(request, "card_no"),
        action,
        psn_no=path_param(request, "psn_no"),
    )
    return json_response(card)


@terminal("counter")
async def replace(request: web.Request) -> web.Response:
    result = await request.app[SERVICES].cards.replace(
        request[CALLER], path_param(request, "card_no")
    )
    return json_response(result, status=201)


@terminal("counter")
async def pin_unblock(request: web.Request) -> web.Response:
    req = await read_json(request, PinUnblockRequest)
    command = await request.app[SERVICES].pin_unblocks.unblock(
        request[CALLER], path_param(request, "card_no"), req
    )
    return json_response(command)
