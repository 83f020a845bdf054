"""Wire structs of designated facilities (定点医药机构)."""

from __future__ import annotations

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
    credit_rating: CreditRating | msgspec.UnsetType = msgspec.UNSET
    status: FacilityStatus | msgspec.UnsetType = msgspec.UNSET


class Facility(msgspec.Struct, kw_only=True):
    fixmedins_code: str
    fixmedins_name: str
    type: str
    level: str | None
    agreements: list[str]
    credit_rating: str
    status: str
