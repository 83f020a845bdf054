"""Every route of the API, in one place (schema/openapi.yaml describes the same set)."""

from __future__ import annotations

from aiohttp import web

from cardsvc.accounts import views as accounts
from cardsvc.audit import views as audit
from cardsvc.cardauth import views as cardauth
from cardsvc.cards import views as cards
from cardsvc.catalog import views as catalog
from cardsvc.facilities import views as facilities
from cardsvc.injuries import views as injuries
from cardsvc.ledger import views as ledger
from cardsvc.ops import views as ops
from cardsvc.persons import views as persons
from cardsvc.terminals import views as terminals


def setup_routes(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.get("/healthz", ops.healthz),
            web.get("/readyz", ops.readyz),
            web.get("/metrics", ops.prometheus),
            # administration
            web.post("/v1/persons", persons.create),
            web.get("/v1/persons/{psn_no}", persons.get),
            web.post("/v1/persons/{psn_no}/insurances", persons.enrol),
            web.post("/v1/accounts/credits", accounts.credit),
            web.post("/v1/facilities", facilities.create),
            web.get("/v1/facilities/{fixmedins_code}", facilities.get),
            web.patch("/v1/facilities/{fixmedins_code}", facilities.update),
            web.post("/v1/terminals", terminals.register),
            web.patch("/v1/terminals/{terminal_id}", terminals.update),
            web.put("/v1/catalog/items", catalog.put_items),
            web.post("/v1/injury-cases", injuries.create),
            web.get("/v1/audit/verify", audit.verify),
            web.get("/v1/ledger/proof", ledger.proof),
            # terminal sign-in
            web.post("/v1/terminals/sign-in", terminals.sign_in),
            web.post("/v1/terminals/sign-in/complete", terminals.sign_in_complete),
            # counter
            web.post("/v1/cards", cards.issue),
            web.get("/v1/cards/{card_no}", cards.get),
            web.post("/v1/cards/{card_no}/replace", cards.replace),
            web.post(
                "/v1/cards/{card_no}/{action:activate|report-loss|cancel-loss|cancel}",
                cards.transition,
            ),
            # any terminal
            web.post("/v1/card-auth/challenge", cardauth.challenge),
            web.post("/v1/card-auth/verify", cardauth.verify),
        ]
    )
