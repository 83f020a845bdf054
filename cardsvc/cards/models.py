"""Wire structs of cards."""

from __future__ import annotations

import datetime as dt

import msgspec

from cardsvc.cards.records import CardRecords
from cardsvc.types import PsnNo


class IssueCard(msgspec.Struct, forbid_unknown_fields=True):
    psn_no: PsnNo


class Card(msgspec.Struct, kw_only=True):
    card_no: str
    card_sn: str
    psn_no: str
    admdvs: str
    status: str
    issue_date: dt.date
    expiry_date: dt.date
    replaces: str | None


class IssuedCard(Card, kw_only=True):
    """What a counter needs to personalise a blank card. Holds the full 社会保障号码 (it is
    written to EF06): never log it."""

    records: CardRecords
    personalization_blob: str


class CardReplaced(msgspec.Struct, kw_only=True):
    replaced: Card
    card: IssuedCard
