"""What a terminal shows people and takes from them, pure: money in yuan (exact, no float)
and times in business time (Asia/Shanghai), whatever zone the terminal's clock is set to.

The service speaks fen (integers) and UTC timestamps with an offset; people read and type
yuan (``12.00``) and see local times with their zone (``2026-03-02 01:30 +08:00``).
"""

from __future__ import annotations

import datetime as dt
import re

from cardsvc.clock import BUSINESS_TZ

FEN_PER_YUAN = 100
_YUAN = re.compile(r"(?P<yuan>[0-9]{1,11})(?:\.(?P<fen>[0-9]{1,2}))?")


def yuan(fen: int) -> str:
    """``123456`` → ``¥1,234.56``, exactly (integer arithmetic)."""
    sign = "-" if fen < 0 else ""
    whole, part = divmod(abs(fen), FEN_PER_YUAN)
    return f"{sign}¥{whole:,}.{part:02d}"


def parse_yuan(text: str) -> int:
    """``12`` / ``12.5`` / ``12.05`` yuan → fen; at most 2 decimals, never a float.
    ``ValueError`` for anything else."""
    match = _YUAN.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an amount in yuan (like 12.00, at most 2 decimals)")
    return int(match["yuan"]) * FEN_PER_YUAN + int((match["fen"] or "0").ljust(2, "0"))


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
