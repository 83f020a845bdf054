"""The list convention, parsed: bounds, defaults, sort allow-lists and bind parameters."""

from __future__ import annotations

import datetime as dt

import pytest

from cardsvc import paging
from cardsvc.paging import QueryInvalid, Sorts, Where

SORTS = Sorts(
    fields={"name": "p.psn_name", "at": "p.created_at"}, default="-at", tiebreak="p.psn_no"
)


def test_defaults_and_order_by_come_from_the_allow_list() -> None:
    page = paging.parse_page({}, SORTS)
    assert (page.page, page.page_size, page.offset) == (1, 50, 0)
    assert page.order_by() == "p.created_at DESC, p.psn_no DESC"
    page = paging.parse_page({"page": "3", "page_size": "200", "sort": "name"}, SORTS)
    assert (page.offset, page.order_by()) == (400, "p.psn_name, p.psn_no")
    assert paging.parse_page({"page": "50", "page_size": "200"}, SORTS).offset == 9800
    by_day = Sorts(fields={"time": "day, time"}, default="-time", tiebreak="id")
    assert paging.parse_page({}, by_day).order_by() == "day DESC, time DESC, id DESC"


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ({"page": "0"}, "page"),
        ({"page": "-1"}, "page"),
        ({"page": "1.5"}, "page"),
        ({"page": "²"}, "page"),
        ({"page_size": "201"}, "page_size"),
        ({"page_size": "0"}, "page_size"),
        ({"page_size": ""}, "page_size"),
        ({"sort": "psn_name"}, "sort"),  # a column, but not an allowed sort field
        ({"sort": "name; DROP TABLE persons"}, "sort"),
        ({"sort": "--name"}, "sort"),
        ({"page": "51", "page_size": "200"}, "page"),  # past the 10,000 items a list reaches
        ({"page": "10001"}, "page"),
    ],
)
def test_bad_values_are_422_naming_the_parameter(query: dict[str, str], parameter: str) -> None:
    with pytest.raises(QueryInvalid) as caught:
        paging.parse_page(query, SORTS)
    assert caught.value.status == 422 and caught.value.code == "QUERY_INVALID"
    assert caught.value.details == {"parameter": parameter}


def test_filters_are_bounded() -> None:
    assert paging.text({"q": "  张  "}, "q") == "张"
    for bad in ("", "   ", "x" * 65, "a\nb"):
        with pytest.raises(QueryInvalid):
            paging.text({"q": bad}, "q")
    assert paging.flag({"handled": "false"}, "handled") is False
    with pytest.raises(QueryInvalid):
        paging.flag({"handled": "yes"}, "handled")
    with pytest.raises(QueryInvalid):
        paging.choice({"kind": "atm"}, "kind", ("pos", "his"))


def test_date_ranges_run_forwards_over_at_most_366_days() -> None:
    day = dt.date(2026, 1, 1)
    assert paging.date_range({"from": "2026-01-01", "to": "2027-01-01"}) == (
        day,
        dt.date(2027, 1, 1),
    )
    for query in (
        {"from": "2026-01-01", "to": "2027-01-02"},
        {"from": "2026-01-02", "to": "2026-01-01"},
        {"from": "2026-02-30"},
        {"to": "20260101"},
    ):
        with pytest.raises(QueryInvalid):
            paging.date_range(query)
    assert paging.recent_range({}, day, 30) == (day - dt.timedelta(days=30), day)
    assert paging.recent_range({"to": "0001-01-02"}, day, 30)[0] == dt.date.min


def test_day_bounds_never_overflow() -> None:
    assert paging.day_start(dt.date.max, after=True).year == 9000
    assert paging.day_start(dt.date.min).year == 1900
    start = paging.day_start(dt.date(2026, 3, 2))
    assert start.astimezone(dt.UTC) == dt.datetime(2026, 3, 1, 16, tzinfo=dt.UTC)


def test_where_binds_values_and_never_interpolates_them() -> None:
    where = Where().when(None, "a = {}").add("b = {}", "x'; --").add("c BETWEEN {} AND {}", 1, 2)
    assert where.sql == "b = $1 AND c BETWEEN $2 AND $3"
    assert where.args == ["x'; --", 1, 2] and where.next == 4
    assert Where().sql == "TRUE"
