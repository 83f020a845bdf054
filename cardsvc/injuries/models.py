"""Wire structs of work-injury cases (工伤认定)."""

from __future__ import annotations

import datetime as dt

import msgspec

from cardsvc.types import PsnNo, Text


class CreateInjuryCase(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    psn_no: PsnNo
    employer: Text
    injury_date: dt.date
    valid_from: dt.date
    valid_to: dt.date


class InjuryCase(msgspec.Struct, kw_only=True):
    case_id: str
    psn_no: str
    employer: str
    injury_date: dt.date
    valid_from: dt.date
    valid_to: dt.date
    status: str
