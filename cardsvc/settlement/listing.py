"""Lists of settlements for the counter, review and audit: filtered by person, facility,
business dates and state; each filter a bind parameter on an indexed column."""

from __future__ import annotations

import datetime as dt

import msgspec

from cardsvc.db import Pool
from cardsvc.listing import fetch_page
from cardsvc.paging import Page, PageQuery, Sorts, Where
from cardsvc.settlement.models import SettlementListItem

SETTLEMENT_SORTS = Sorts(
    fields={
        # As settlements_time orders them: the newest page is that index's end.
        "setl_time": "setl_date, setl_time",
        "medfee_sumamt": "medfee_sumamt",
        "fund_pay_sumamt": "fund_pay_sumamt",
    },
    default="-setl_time",
    tiebreak="setl_id",
    unindexed=frozenset({"medfee_sumamt", "fund_pay_sumamt"}),
)
# An amount sort reads every matching row: one person's, or at most a month's.
AMOUNT_SORT_DAYS = 31
AMOUNT_SORT_NEEDS = f"psn_no, or from and to at most {AMOUNT_SORT_DAYS} days apart"
SETTLEMENT_COLUMNS = (
    "setl_id, psn_no, card_no, fixmedins_code, insutype, med_type, setl_time, setl_date,"
    " medfee_sumamt, fund_pay_sumamt, acct_pay, psn_cash_pay, status, review_status,"
    " clearing_date"
)
# ``status`` filter values: the settlement's state, or where it stands in review.
STATUSES = ("settled", "reversed", "pending_review")


class SettlementFilter(msgspec.Struct, frozen=True, kw_only=True):
    psn_no: str | None = None
    fixmedins_code: str | None = None
    start: dt.date | None = None
    end: dt.date | None = None
    status: str | None = None


def narrowed(filters: SettlementFilter) -> bool:
    """Whether the filters leave few enough rows to sort them all (``AMOUNT_SORT_NEEDS``)."""
    if filters.psn_no is not None:
        return True
    if filters.start is None or filters.end is None:
        return False
    return (filters.end - filters.start).days < AMOUNT_SORT_DAYS


def settlement_filter(filters: SettlementFilter) -> Where:
    where = (
        Where()
        .when(filters.psn_no, "psn_no = {}")
        .when(filters.fixmedins_code, "fixmedins_code = {}")
        .when(filters.start, "setl_date >= {}")
        .when(filters.end, "setl_date <= {}")
    )
    if filters.status == "pending_review":
        where.add("review_status = 'pending' AND status = 'settled'")
    elif filters.status is not None:
        where.add("status = {}", filters.status)
    return where


class SettlementList:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def search(self, filters: SettlementFilter, page: PageQuery) -> Page[SettlementListItem]:
        where = settlement_filter(filters)
        rows, total = await fetch_page(
            self._pool, columns=SETTLEMENT_COLUMNS, source="settlements", where=where, page=page
        )
        return page.answer([SettlementListItem(**dict(r)) for r in rows], total)
