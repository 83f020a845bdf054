"""Settlement ids: the documented shape, the business date, and time order within a day."""

from __future__ import annotations

import datetime as dt
import re

from cardsvc.settlement.plan import new_setl_id

SHAPE = re.compile(r"^S\d{8}[0-9a-f]{20}$")  # schema/openapi.yaml


def test_shape_and_business_date():
    # 16:30 UTC is 00:30 the next day in Asia/Shanghai.
    at = dt.datetime(2026, 11, 24, 16, 30, tzinfo=dt.UTC)
    setl_id = new_setl_id(at)
    assert SHAPE.match(setl_id)
    assert setl_id[1:9] == "20261125"
    assert int(setl_id[9:19], 16) == 30 * 60 * 1_000_000


def test_ids_of_a_day_sort_by_time():
    start = dt.datetime(2026, 11, 25, 1, 0, tzinfo=dt.UTC)
    times = [start + dt.timedelta(microseconds=n * 997) for n in range(2000)]
    ids = [new_setl_id(t) for t in times]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_last_microsecond_of_the_day_fits():
    at = dt.datetime(2026, 11, 25, 15, 59, 59, 999999, tzinfo=dt.UTC)  # 23:59:59.999999 local
    setl_id = new_setl_id(at)
    assert SHAPE.match(setl_id) and setl_id[1:9] == "20261125"
