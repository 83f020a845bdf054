"""The service objects of each area, built once per process from their dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cardsvc.accounts.services import AccountCredits
from cardsvc.audit.entries import AuditEntries
from cardsvc.audit.services import AuditAnchors, AuditLog
from cardsvc.batching import Batcher
from cardsvc.cardauth.services import CardAuthenticator, CardTokens
from cardsvc.cards.services import CardIssuer
from cardsvc.cards.unblock import PinUnblocker
from cardsvc.catalog.services import Catalog
from cardsvc.clearing.listing import ClearingRuns
from cardsvc.clearing.services import Clearing
from cardsvc.config import Settings
from cardsvc.db import Pool
from cardsvc.facilities.services import FacilityRatings, FacilityRegistry
from cardsvc.hsm.client import HsmClient
from cardsvc.injuries.services import InjuryCases
from cardsvc.kiosk.services import Kiosk
from cardsvc.ledger.services import Ledger
from cardsvc.national.clients import GatewayClients
from cardsvc.national.dispatch import Gateway
from cardsvc.national.lookups import CertnoLookups
from cardsvc.operators.services import Operators
from cardsvc.persons.search import PersonSearch
from cardsvc.persons.services import PersonRegistry
from cardsvc.privacy import DataProtector
from cardsvc.reconciliation.services import Reconciliation
from cardsvc.reports.services import PublicReports
from cardsvc.settlement.listing import SettlementList
from cardsvc.settlement.services import SettlementService
from cardsvc.supervision.services import Supervision
from cardsvc.terminals.listing import TerminalList
from cardsvc.terminals.services import SignIn, TerminalAuthenticator, TerminalRegistry


@dataclass(frozen=True, slots=True)
class Services:
    audit: AuditLog
    ledger: Ledger
    persons: PersonRegistry
    account_credits: AccountCredits
    facilities: FacilityRegistry
    catalog: Catalog
    injuries: InjuryCases
    terminals: TerminalRegistry
    sign_in: SignIn
    terminal_auth: TerminalAuthenticator
    cards: CardIssuer
    pin_unblocks: PinUnblocker
    card_auth: CardAuthenticator
    card_tokens: CardTokens
    settlements: SettlementService
    reconciliation: Reconciliation
    clearing: Clearing
    supervision: Supervision
    kiosk: Kiosk
    audit_anchors: AuditAnchors
    gateway_clients: GatewayClients
    gateway: Gateway
    certno_lookups: CertnoLookups
    # Operator lists and actions
    person_search: PersonSearch
    facility_ratings: FacilityRatings
    terminal_list: TerminalList
    settlement_list: SettlementList
    clearing_runs: ClearingRuns
    audit_entries: AuditEntries
    public_reports: PublicReports
    operators: Operators
    # The group-commit batchers of the services above (each needs the pool): closed at
    # shutdown, once no request can submit more and before the pool closes.
    batchers: tuple[Batcher[Any, Any], ...] = ()


def build_services(settings: Settings, pool: Pool, hsm: HsmClient) -> Services:
    protector = DataProtector(settings.data_key)
    audit = AuditLog(pool, timeout=settings.long_request_timeout)
    card_tokens = CardTokens(settings)
    cards = CardIssuer(pool, hsm, protector, audit)
    terminal_auth = TerminalAuthenticator(pool, protector, settings)
    card_auth = CardAuthenticator(pool, hsm, settings)
    gateway_clients = GatewayClients(pool, protector, audit)
    gateway = Gateway(pool, gateway_clients, settings)
    persons = PersonRegistry(pool, protector, audit)
    supervision = Supervision(pool, audit)
    return Services(
        audit=audit,
        ledger=Ledger(pool, timeout=settings.long_request_timeout),
        persons=persons,
        account_credits=AccountCredits(pool, audit),
        facilities=FacilityRegistry(pool, audit),
        catalog=Catalog(pool, audit),
        injuries=InjuryCases(pool, audit),
        terminals=TerminalRegistry(pool, hsm, audit),
        sign_in=SignIn(pool, hsm, protector, audit, settings),
        terminal_auth=terminal_auth,
        cards=cards,
        pin_unblocks=PinUnblocker(pool, hsm, card_tokens, audit),
        card_auth=card_auth,
        card_tokens=card_tokens,
        settlements=SettlementService(
            pool, card_tokens, audit, max_batch=settings.settle_batch_max
        ),
        reconciliation=Reconciliation(pool),
        clearing=Clearing(
            pool, audit, timeout=settings.clearing_timeout, wait=settings.clearing_wait
        ),
        supervision=supervision,
        kiosk=Kiosk(pool, card_tokens, cards),
        audit_anchors=audit_anchors(settings, pool, hsm, audit),
        gateway_clients=gateway_clients,
        gateway=gateway,
        certno_lookups=CertnoLookups(pool, protector, settings.gateway_certno_misses_per_day),
        person_search=PersonSearch(pool, protector, persons),
        facility_ratings=FacilityRatings(pool, audit),
        terminal_list=TerminalList(pool),
        settlement_list=SettlementList(pool),
        clearing_runs=ClearingRuns(pool),
        audit_entries=AuditEntries(pool),
        public_reports=PublicReports(pool, audit, supervision),
        operators=Operators(pool, audit, settings),
        batchers=(
            terminal_auth.admissions,
            card_auth.challenges,
            card_auth.consumptions,
            gateway.messages.admissions,
            gateway.messages.answers,
        ),
    )


def audit_anchors(settings: Settings, pool: Pool, hsm: HsmClient, audit: AuditLog) -> AuditAnchors:
    return AuditAnchors(
        pool,
        hsm,
        audit,
        Path(settings.audit_anchor_dir),
        interval=settings.audit_anchor_interval,
    )
