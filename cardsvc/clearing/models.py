"""Wire structs of clearing (清算) runs."""

from __future__ import annotations

import datetime as dt

import msgspec


class RunClearing(msgspec.Struct, forbid_unknown_fields=True):
    clearing_date: dt.date


class ClearingItem(msgspec.Struct, frozen=True, kw_only=True):
    fixmedins_code: str
    fund: str  # fund_pay_type, or "acct" for the personal account
    settlements: int
    settled_amt: int
    reversals: int
    reversed_amt: int
    net_amt: int


class FacilityClearing(msgspec.Struct, kw_only=True):
    fixmedins_code: str
    settlements: int  # distinct settlements cleared (a per-fund item counts those it paid)
    reversals: int  # distinct reversals netted
    net_amt: int
    items: list[ClearingItem]


class ClearingHold(msgspec.Struct, frozen=True, kw_only=True):
    """What a run did not clear for one facility, and why (``code``): its settlements above
    the amount limits (``AMOUNT_LIMIT_EXCEEDED``, each held until it is reversed), or all
    of its figures, too large to store (``AMOUNT_OUT_OF_RANGE``, held to the next run)."""

    fixmedins_code: str
    code: str
    message: str
    settlements: int  # how many settlements are held (0: the facility's whole share)
    setl_ids: list[str]  # the first of them


class ClearingRun(msgspec.Struct, kw_only=True):
    clearing_date: dt.date
    created_at: dt.datetime
    settlements_cleared: int
    reversals_netted: int
    net_total: int
    facilities: list[FacilityClearing]
    # Runs stored before holds existed have none.
    held: list[ClearingHold] = msgspec.field(default_factory=list)


class ClearingRunning(msgspec.Struct, kw_only=True):
    """The answer for a day whose run has started and not finished yet."""

    clearing_date: dt.date
    status: str = "running"


class ClearingRunSummary(msgspec.Struct, kw_only=True):
    """A stored run in the list of runs (its figures per facility: the run itself)."""

    clearing_date: dt.date
    created_at: dt.datetime
    settlements_cleared: int
    reversals_netted: int
    net_total: int
    facilities: int  # how many facilities it pays or charges
    held: int  # how many facilities it held something back for
