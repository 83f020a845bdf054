"""Every route of the API, in one place (schema/openapi.yaml describes the same set)."""

from __future__ import annotations

from aiohttp import web

from cardsvc.accounts import views as accounts
from cardsvc.audit import views as audit
from cardsvc.cardauth import views as cardauth
from cardsvc.cards import views as cards
from cardsvc.catalog import views as catalog
from cardsvc.clearing import views as clearing
from cardsvc.console import views as console
from cardsvc.facilities import views as facilities
from cardsvc.injuries import views as injuries
from cardsvc.kiosk import views as kiosk
from cardsvc.ledger import views as ledger
from cardsvc.national import views as national
from cardsvc.operators import views as operators
from cardsvc.ops import views as ops
from cardsvc.persons import views as persons
from cardsvc.reconciliation import views as reconciliation
from cardsvc.reports import views as reports
from cardsvc.settlement import views as settlements
from cardsvc.supervision import views as supervision
from cardsvc.terminals import views as terminals
from cardsvc.web.auth import require_declared_access


def setup_routes(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.get("/healthz", ops.healthz),
            web.get("/readyz", ops.readyz),
            web.get("/metrics", ops.prometheus),
            web.get("/openapi.yaml", ops.openapi),
            web.get("/docs", ops.docs),
            web.get("/docs/{asset}", ops.docs_asset),
            # operators: the console session, operators and their API tokens
            web.post("/v1/operator-sessions", operators.sign_in),
            web.get("/v1/operator-sessions/current", operators.current),
            web.delete("/v1/operator-sessions/current", operators.sign_out),
            web.put("/v1/operator-sessions/current/password", operators.change_password),
            web.post("/v1/operators", operators.create),
            web.get("/v1/operators", operators.list_operators),
            web.get("/v1/operators/{operator_id}", operators.get),
            web.patch("/v1/operators/{operator_id}", operators.update),
            web.post("/v1/operators/{operator_id}/password", operators.reset_password),
            web.post("/v1/operators/{operator_id}/tokens", operators.create_token),
            web.get("/v1/operators/{operator_id}/tokens", operators.list_tokens),
            web.delete("/v1/operators/{operator_id}/tokens/{token_id}", operators.revoke_token),
            # administration
            web.post("/v1/persons", persons.create),
            web.get("/v1/persons", persons.search),
            web.get("/v1/persons/{psn_no}", persons.get),
            web.get("/v1/persons/{psn_no}/overview", persons.overview),
            web.post("/v1/persons/{psn_no}/insurances", persons.enrol),
            web.post(
                "/v1/persons/{psn_no}/cards/{card_no}/{action:activate|report-loss|cancel-loss|cancel}",
                cards.person_card_transition,
            ),
            web.post("/v1/accounts/credits", accounts.credit),
            web.post("/v1/facilities", facilities.create),
            web.get("/v1/facilities", facilities.search),
            web.get("/v1/facilities/{fixmedins_code}", facilities.get),
            web.patch("/v1/facilities/{fixmedins_code}", facilities.update),
            web.post("/v1/facilities/{fixmedins_code}/credit-rating", facilities.change_rating),
            web.get("/v1/facilities/{fixmedins_code}/credit-ratings", facilities.rating_history),
            web.post("/v1/terminals", terminals.register),
            web.get("/v1/terminals", terminals.search),
            # Terminal ids begin with T: /v1/terminals/sign-in is never taken for one.
            web.patch("/v1/terminals/{terminal_id:T[^/]*}", terminals.update),
            web.put("/v1/catalog/items", catalog.put_items),
            web.get("/v1/catalog/items", catalog.list_items),
            web.post("/v1/injury-cases", injuries.create),
            web.get("/v1/audit/verify", audit.verify),
            web.get("/v1/audit/entries", audit.entries),
            web.post("/v1/audit/anchors", audit.anchor),
            web.get("/v1/ledger/proof", ledger.proof),
            web.get("/v1/supervision/flags", supervision.flags),
            web.post("/v1/supervision/flags/{flag_id}/handle", supervision.handle_flag),
            web.get("/v1/reviews", supervision.reviews),
            web.get("/v1/reviews/{setl_id:S[^/]*}", supervision.review),
            web.post("/v1/reviews/{setl_id}/{decision:approve|reject}", supervision.decide),
            web.get("/v1/reports/funds", supervision.fund_report),
            web.post("/v1/clearing/runs", clearing.run),
            web.get("/v1/clearing/runs", clearing.runs),
            web.get("/v1/clearing/runs/{clearing_date}", clearing.get),
            web.get("/v1/clearing/runs/{clearing_date}/files/{fixmedins_code}", clearing.file),
            web.post("/v1/public-reports", reports.publish),
            web.get("/v1/public-reports", reports.published),
            web.post("/v1/gateway-clients", national.create_client),
            web.get("/v1/gateway-clients", national.list_clients),
            web.patch("/v1/gateway-clients/{paasid}", national.update_client),
            # the published fund reports, open to all
            web.get("/public/reports", reports.public_list),
            web.get("/public/reports/{report_id:R[0-9A-F]+}.csv", reports.public_csv),
            web.get("/public/reports/{report_id:R[0-9A-F]+}", reports.public_get),
            # the national interface gateway (its own TIF authentication)
            web.post("/fsi/api/rsfComIfsService/callService", national.call_service),
            # terminal sign-in
            web.post("/v1/terminals/sign-in", terminals.sign_in),
            web.post("/v1/terminals/sign-in/complete", terminals.sign_in_complete),
            # counter
            web.post("/v1/cards", cards.issue),
            web.get("/v1/cards/{card_no}", cards.get),
            web.post("/v1/cards/{card_no}/replace", cards.replace),
            web.post("/v1/cards/{card_no}/pin-unblock", cards.pin_unblock),
            web.post(
                "/v1/cards/{card_no}/{action:activate|report-loss|cancel-loss|cancel}",
                cards.transition,
            ),
            # any terminal
            web.post("/v1/card-auth/challenge", cardauth.challenge),
            web.post("/v1/card-auth/verify", cardauth.verify),
            # pos and his: settlement
            web.post("/v1/settlements/preview", settlements.preview),
            web.post("/v1/settlements", settlements.settle),
            # Settlement ids begin with S: /v1/settlements/preview is never taken for one.
            web.get("/v1/settlements", settlements.search),
            web.get("/v1/settlements/{setl_id:S[^/]*}", settlements.get),
            web.post("/v1/settlements/{setl_id:S[^/]*}/reverse", settlements.reverse),
            web.post("/v1/settlements/{setl_id:S[^/]*}/admin-reversal", settlements.admin_reverse),
            web.post("/v1/reconciliation", reconciliation.statement),
            web.post("/v1/reconciliation/detail", reconciliation.detail),
            # kiosk
            web.post("/v1/kiosk/summary", kiosk.summary),
            web.post("/v1/kiosk/report-loss", kiosk.report_loss),
            # the operators' console and the public fund-report page (static files)
            web.get("/console/", console.console),
            web.get("/console/static/{asset}", console.static),
            web.get("/public/", console.public_page),
        ]
    )
    require_declared_access(app)
