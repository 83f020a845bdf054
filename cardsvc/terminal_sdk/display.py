"""What a terminal shows people, pure: times in business time (Asia/Shanghai), whatever zone
the terminal's clock is set to (money in yuan is ``cardsvc.money``).

The service speaks fen (integers) and UTC timestamps with an offset; people read and type
yuan (``12.00``) and see local times with their zone (``2026-03-02 01:30 +08:00``).
"""

from __future__ import annotations

import datetime as dt

from cardsvc.clock import BUSINESS_TZ


def local_time(when: str | float | dt.datetime) -> str:
    """A service timestamp (ISO-8601 with offset), a UNIX time or an aware datetime, in
    business time with its offset: ``2026-03-02 01:30 +08:00``."""
    if isinstance(when, str):
        moment = dt.datetime.fromisoformat(when)
    elif isinstance(when, dt.datetime):
        moment = when
    else:
        moment = dt.datetime.fromtimestamp(when, dt.UTC)
    if moment.tzinfo is None:
        raise ValueError(f"{when!r} has no time zone")
    local = moment.astimezone(BUSINESS_TZ)
    offset = local.isoformat(timespec="minutes")[-6:]  # +08:00
    return f"{local:%Y-%m-%d %H:%M} {offset}"
