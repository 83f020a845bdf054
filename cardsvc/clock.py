"""Business time: dates are calendar dates in Asia/Shanghai (docs/policy.md, Units)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

BUSINESS_TZ = ZoneInfo("Asia/Shanghai")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def business_date(at: dt.datetime | None = None) -> dt.date:
    return (at or now()).astimezone(BUSINESS_TZ).date()
