"""The list convention of the /v1 API, as pure parsing: ``page``, ``page_size`` and ``sort``
(and the usual filters) read from a query into validated values, every bad value a
``422 QUERY_INVALID`` naming its parameter.

A list answers ``{"items", "page", "page_size", "total"}`` (``Page``); ``total`` counts at
most ``MAX_TOTAL`` matches, and no page starts beyond them. Sorting is by one
field of the endpoint's allow-list (``Sorts``): the SQL written into ORDER BY comes from
that list, never from the query. Filters go into SQL only as bind parameters (``Where``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from cardsvc.clock import BUSINESS_TZ
from cardsvc.errors import BusinessRuleViolation

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# A list counts at most this many matches (``total``) and pages no further: a count or an
# OFFSET over millions of rows is a scan nobody needs; the filters narrow it instead.
MAX_TOTAL = 10_000
MAX_Q = 64
MAX_RANGE_DAYS = 366

_NUMBER = re.compile(r"^[0-9]{1,7}$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


class QueryInvalid(BusinessRuleViolation):
    default_code = "QUERY_INVALID"

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}", details={"parameter": parameter})


class Page(msgspec.Struct, Generic[T], kw_only=True):
    items: list[T]
    page: int
    page_size: int
    total: int


@dataclass(frozen=True)
class Sorts:
    """An endpoint's sort fields: public name → SQL expressions (constants of the code,
    comma-separated when an index orders by several columns), the default (``-name`` for
    descending), and a unique key that makes the order total (so that pages neither repeat
    nor skip rows)."""

    fields: Mapping[str, str]
    default: str
    tiebreak: str
    # Fields no index orders the whole table by: sorting by one sorts every matching row,
    # so the endpoint allows it only once its filters have narrowed the rows (``narrowing``).
    unindexed: frozenset[str] = frozenset()

    def names(self) -> list[str]:
        return sorted(self.fields)

    def check_cost(self, page: PageQuery, narrowed: bool, needs: str) -> None:
        """``422 QUERY_INVALID`` (sort) for an unindexed sort of rows no filter narrowed:
        a sort of the whole table on every request. ``needs`` says which filter would do."""
        if page.sort in self.unindexed and not narrowed:
            raise QueryInvalid("sort", f"sorting by {page.sort} needs {needs}")


@dataclass(frozen=True)
class PageQuery:
    page: int
    page_size: int
    sort: str  # a key of the endpoint's Sorts.fields
    descending: bool
    sorts: Sorts = field(repr=False)

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size

    def order_by(self) -> str:
        """ORDER BY's text, built from the allow-list only."""
        direction = " DESC" if self.descending else ""
        keys = [*self.sorts.fields[self.sort].split(", "), self.sorts.tiebreak]
        return ", ".join(f"{key}{direction}" for key in keys)

    def answer(self, items: list[T], total: int) -> Page[T]:
        return Page(items=items, page=self.page, page_size=self.page_size, total=total)


def _number(query: Mapping[str, str], name: str, default: int, most: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not _NUMBER.fullmatch(raw) or not 1 <= int(raw) <= most:
        raise QueryInvalid(name, f"must be a whole number 1-{most}")
    return int(raw)


def parse_page(query: Mapping[str, str], sorts: Sorts) -> PageQuery:
    """``page`` (≥1, default 1), ``page_size`` (1-200, default 50), ``sort`` (a field of
    ``sorts``, ``-field`` for descending; default ``sorts.default``)."""
    page = _number(query, "page", 1, MAX_TOTAL)
    page_size = _number(query, "page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if (page - 1) * page_size >= MAX_TOTAL:
        raise QueryInvalid("page", f"pages reach {MAX_TOTAL} items at most: narrow the filters")
    raw = query.get("sort", sorts.default)
    name = raw.removeprefix("-")
    if name not in sorts.fields:
        raise QueryInvalid("sort", f"must be one of {', '.join(sorts.names())} (or -field)")
    return PageQuery(page, page_size, name, raw.startswith("-"), sorts)


def text(query: Mapping[str, str], name: str, most: int = MAX_Q) -> str | None:
    """A free-text filter: trimmed, 1-``most`` characters, no control characters."""
    raw = query.get(name)
    if raw is None:
        return None
    value = raw.strip()
    if not value or len(value) > most or not value.isprintable():
        raise QueryInvalid(name, f"must be 1-{most} printable characters")
    return value


def pattern(query: Mapping[str, str], name: str, regex: str) -> str | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not re.fullmatch(regex, raw):
        raise QueryInvalid(name, "is malformed")
    return raw


def choice(query: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    raw = query.get(name)
    if raw is not None and raw not in choices:
        raise QueryInvalid(name, f"must be one of {', '.join(choices)}")
    return raw


def flag(query: Mapping[str, str], name: str) -> bool | None:
    value = choice(query, name, ("true", "false"))
    return None if value is None else value == "true"


def date(query: Mapping[str, str], name: str) -> dt.date | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        if _DATE.fullmatch(raw):
            return dt.date.fromisoformat(raw)
    except ValueError:
        pass
    raise QueryInvalid(name, "must be a date YYYY-MM-DD")


def date_range(
    query: Mapping[str, str],
    default_from: dt.date | None = None,
    default_to: dt.date | None = None,
    most_days: int = MAX_RANGE_DAYS,
) -> tuple[dt.date | None, dt.date | None]:
    """``from`` and ``to`` (inclusive business dates). Given both (or defaulted), they run
    forwards over at most ``most_days`` days."""
    start = date(query, "from") or default_from
    end = date(query, "to") or default_to
    if start is not None and end is not None:
        if end < start:
            raise QueryInvalid("to", "is before from")
        if (end - start).days >= most_days:
            raise QueryInvalid("to", f"from..to spans at most {most_days} days")
    return start, end


def recent_range(
    query: Mapping[str, str], today: dt.date, default_days: int
) -> tuple[dt.date, dt.date]:
    """``from`` and ``to`` that are never open: ``to`` defaults to ``today``, ``from`` to
    ``default_days`` before ``to``; bounded as ``date_range``."""
    end = date(query, "to") or today
    earliest = dt.date.fromordinal(max(1, end.toordinal() - default_days))
    start, end_ = date_range(query, earliest, end)
    if start is None or end_ is None:  # both have defaults
        raise AssertionError("unreachable")
    return start, end_


# Instants outside these bounds cannot be sent to the database (a date of year 1 in
# Asia/Shanghai is year 0 in UTC); no row is outside them, so a bound is clamped to them.
_EARLIEST, _LATEST = dt.date(1900, 1, 1), dt.date(9000, 1, 1)


def day_start(day: dt.date, *, after: bool = False) -> dt.datetime:
    """The first instant of a business date (of the next one, ``after``): a date range over
    an indexed timestamp column."""
    day = min(max(day, _EARLIEST), _LATEST)
    return dt.datetime.combine(day + dt.timedelta(days=int(after)), dt.time(), BUSINESS_TZ)


class Where:
    """WHERE conditions whose values are only ever bind parameters: ``add("x = {}", v)``
    numbers the placeholder; the condition text is the caller's constant."""

    def __init__(self, first: int = 1) -> None:
        self._conditions: list[str] = []
        self.args: list[Any] = []
        self._first = first

    def add(self, condition: str, *values: Any) -> Where:
        numbers = [f"${self._first + len(self.args) + i}" for i in range(len(values))]
        self._conditions.append(condition.format(*numbers))
        self.args.extend(values)
        return self

    def when(self, value: Any, condition: str) -> Where:
        """``add(condition, value)`` unless the filter is absent (None)."""
        return self if value is None else self.add(condition, value)

    @property
    def sql(self) -> str:
        return " AND ".join(self._conditions) if self._conditions else "TRUE"

    @property
    def next(self) -> int:
        return self._first + len(self.args)
