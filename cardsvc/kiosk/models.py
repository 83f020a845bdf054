"""Wire structs of the self-service kiosk (自助终端)."""

from __future__ import annotations

import datetime as dt

import msgspec

from cardsvc.settlement.models import CardToken


class KioskRequest(msgspec.Struct, forbid_unknown_fields=True):
    card_token: CardToken


class RecentSettlement(msgspec.Struct, kw_only=True):
    setl_id: str
    setl_time: dt.datetime
    fixmedins_code: str
    insutype: str
    med_type: str
    medfee_sumamt: int
    fund_pay_sumamt: int
    acct_pay: int
    psn_cash_pay: int
    status: str


class KioskSummary(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The holder's part (``psn_no``, ``balc``, ``settlements``) only for an active card: a
    card reported lost, replaced or cancelled shows its status and nothing else."""

    card_no: str
    card_status: str
    psn_no: str | None = None
    balc: int | None = None
    settlements: list[RecentSettlement] | None = None
