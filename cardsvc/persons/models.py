"""Wire structs of persons and their insurance enrolments."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec

from cardsvc.settlement.models import SettlementListItem
from cardsvc.types import Admdvs, Gender, Insutype, PsnType

Certno = Annotated[str, msgspec.Meta(min_length=18, max_length=18)]
PsnName = Annotated[str, msgspec.Meta(min_length=1, max_length=30, pattern=r"^[^\x00-\x1f]+$")]


class CreatePerson(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    certno: Certno
    psn_name: PsnName
    gend: Gender
    brdy: dt.date
    admdvs: Admdvs
    psn_type: PsnType


class EnrolInsurance(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    insutype: Insutype
    begndate: dt.date
    enddate: dt.date | None = None


class Insurance(msgspec.Struct, kw_only=True):
    insutype: str
    begndate: dt.date
    enddate: dt.date | None


class Person(msgspec.Struct, kw_only=True):
    psn_no: str
    certno: str  # masked (certno.mask)
    psn_name: str
    gend: str
    birth_year: int  # never the birth date: with the mask it would rebuild the number
    admdvs: str
    psn_type: str
    balc: int
    insurances: list[Insurance]


class BaseInfo(msgspec.Struct, kw_only=True):
    """The national 1101 ``baseinfo`` block (identity masked, birth year instead of
    ``brdy``)."""

    psn_no: str
    psn_name: str
    certno: str
    gend: str
    birth_year: int
    admdvs: str


class InsuInfo(msgspec.Struct, kw_only=True):
    """The national 1101 ``insuinfo`` block: one per active enrolment."""

    insutype: str
    psn_type: str
    balc: int
    begndate: dt.date
    enddate: dt.date | None


class PersonSummary(msgspec.Struct, kw_only=True):
    baseinfo: BaseInfo
    insuinfo: list[InsuInfo]


class PersonListItem(msgspec.Struct, kw_only=True):
    psn_no: str
    certno: str  # masked: a search by number never shows it in clear
    psn_name: str
    gend: str
    birth_year: int
    admdvs: str
    psn_type: str


class AccountBalance(msgspec.Struct, kw_only=True):
    balance: int


class CreditLine(msgspec.Struct, kw_only=True):
    ref: str
    amount: int
    created_at: dt.datetime


class CardStatusChange(msgspec.Struct, kw_only=True):
    action: str  # card.issued, card.activate, card.report-loss ...
    from_status: str | None = msgspec.field(name="from")
    to_status: str = msgspec.field(name="to")
    actor: str
    at: dt.datetime


class CardWithHistory(msgspec.Struct, kw_only=True):
    card_no: str
    status: str
    issue_date: dt.date
    expiry_date: dt.date
    replaces: str | None
    history: list[CardStatusChange]


class PersonOverview(msgspec.Struct, kw_only=True):
    person: Person
    insurances: list[Insurance]
    accounts: AccountBalance
    credits: list[CreditLine]
    cards: list[CardWithHistory]
    settlements: list[SettlementListItem]
