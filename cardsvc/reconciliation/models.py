"""Wire structs of reconciliation, in the shape of the national 3201 (totals) and 3202
(detail) interfaces."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

from cardsvc.types import Insutype

SETL_ID_MAX = 64
DETAIL_MAX_IDS = 20_000  # a busy hospital's day; the whole day in one request (see below)
# A detail request must carry the facility's whole day (what it leaves out counts as missing
# on its side), so its body may exceed the app-wide limit: every id at full length, quoted,
# with a comma, and room for the rest of the object.
DETAIL_MAX_BODY = DETAIL_MAX_IDS * (SETL_ID_MAX + 3) + 1024

SetlIdText = Annotated[str, msgspec.Meta(min_length=1, max_length=SETL_ID_MAX)]
# A period's totals: up to 500 lines a settlement at the largest price make large sums.
Total = Annotated[int, msgspec.Meta(ge=0, le=2**62)]


class Totals(msgspec.Struct, kw_only=True):
    fixmedins_setl_cnt: Annotated[int, msgspec.Meta(ge=0)]
    medfee_sumamt: Total
    fund_pay_sumamt: Total
    acct_pay: Total


class StatementRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    insutype: Insutype
    stmt_begndate: dt.date
    stmt_enddate: dt.date
    fixmedins_setl_cnt: Annotated[int, msgspec.Meta(ge=0)]
    medfee_sumamt: Total
    fund_pay_sumamt: Total
    acct_pay: Total


class StatementResult(msgspec.Struct, kw_only=True):
    stmt_rslt: Literal["0", "1"]  # 0 the figures match, 1 they do not
    stmt_rslt_dscr: str
    insutype: str
    stmt_begndate: dt.date
    stmt_enddate: dt.date
    service: Totals
    facility: Totals
    # The facility's settlements of the period above the amount limits (stored before they
    # existed): in no total of ``service``. At most 100 are named.
    out_of_limits: list[str] = msgspec.field(default_factory=list)


class DetailRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    stmt_date: dt.date
    insutype: Insutype | None = None
    setl_ids: Annotated[list[SetlIdText], msgspec.Meta(max_length=DETAIL_MAX_IDS)]


class DetailResult(msgspec.Struct, kw_only=True):
    stmt_rslt: Literal["0", "1"]
    matched: int
    missing_on_service: list[str]  # listed by the facility, unknown to the service
    missing_on_facility: list[str]  # settled at the service, not listed by the facility
    reversed_on_service: list[str]  # listed by the facility, reversed at the service
