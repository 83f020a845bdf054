"""Wire structs of cards."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec

from cardsvc.cards.records import CardRecords
from cardsvc.settlement.models import CardToken
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


# The card's answer to GET CHALLENGE with Le 08: 16 hex digits.
CardChallenge = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{16}$")]


class PinUnblockRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``card_token``: this terminal session's card authentication of this card, just done;
    ``card_challenge``: the card's own fresh challenge, which the command's MAC covers."""

    card_token: CardToken
    card_challenge: CardChallenge


class PinUnblockCommand(msgspec.Struct, kw_only=True):
    """RESET RETRY COUNTER under secure messaging, for the terminal to send to the card
    (then CHANGE REFERENCE DATA with the new PIN the holder enters at the reader)."""

    card_no: str
    command: str  # the APDU, lowercase hex
