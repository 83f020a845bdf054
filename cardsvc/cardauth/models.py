"""Wire structs of card authentication."""

from __future__ import annotations

import datetime as dt

import msgspec

from cardsvc.cardauth.tokens import Purpose
from cardsvc.persons.models import BaseInfo, InsuInfo
from cardsvc.types import CardNo, CardSn, Hex32


class ChallengeRequest(msgspec.Struct, forbid_unknown_fields=True):
    card_no: CardNo
    purpose: Purpose


class Challenge(msgspec.Struct, kw_only=True):
    auth_id: str
    challenge: str
    key_ref: str  # "01" K_auth or "02" K_txn: the INTERNAL AUTHENTICATE key reference
    expires_at: dt.datetime


class VerifyRequest(msgspec.Struct, forbid_unknown_fields=True):
    auth_id: Hex32
    card_sn: CardSn
    cryptogram: Hex32


class CardAuthenticated(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``baseinfo`` and ``insuinfo`` only for an active card: a card reported lost shows
    its status and nothing of its holder."""

    card_token: str
    expires_at: dt.datetime
    purpose: str
    card_no: str
    card_status: str
    baseinfo: BaseInfo | None = None
    insuinfo: list[InsuInfo] | None = None
