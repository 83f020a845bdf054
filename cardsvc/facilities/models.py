"""Wire structs of designated facilities (定点医药机构)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

from cardsvc.types import CreditRating, FacilityCode, Insutype, Text

FacilityType = Literal["hospital", "pharmacy"]
Level = Literal["community", "1", "2", "3"]
FacilityStatus = Literal["active", "suspended"]


class CreateFacility(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    fixmedins_code: FacilityCode
    fixmedins_name: Text
    type: FacilityType
    level: Level | None = None
    agreements: list[Insutype] = []
    credit_rating: CreditRating = "A"
    status: FacilityStatus = "active"


class UpdateFacility(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    fixmedins_name: Text | msgspec.UnsetType = msgspec.UNSET
    level: Level | msgspec.UnsetType | None = msgspec.UNSET
    agreements: list[Insutype] | msgspec.UnsetType = msgspec.UNSET
    # The credit rating changes only through its own route, with a reason and a history.
    status: FacilityStatus | msgspec.UnsetType = msgspec.UNSET


class Facility(msgspec.Struct, kw_only=True):
    fixmedins_code: str
    fixmedins_name: str
    type: str
    level: str | None
    agreements: list[str]
    credit_rating: str
    status: str


class ChangeCreditRating(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    credit_rating: CreditRating
    reason: Text


class CreditRatingChange(msgspec.Struct, kw_only=True):
    from_rating: str = msgspec.field(name="from")
    to_rating: str = msgspec.field(name="to")
    reason: str
    operator_id: str | None  # None: a change no operator made
    operator_name: str | None
    actor: str
    at: dt.datetime


class CreditRatingHistory(msgspec.Struct, kw_only=True):
    items: list[CreditRatingChange]
