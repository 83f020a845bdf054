"""Open-loop arrival schedules, pure: when each request is *meant* to be sent.

The generator starts every request at its intended time whatever happened to earlier ones,
and measures latency from that time, so a server that stalls cannot hide its queue by
slowing the client down (coordinated omission).
"""

from __future__ import annotations

import bisect
import random
from typing import Literal

Arrival = Literal["poisson", "fixed"]


def offsets(
    rate: float, duration: float, arrival: Arrival, rng: random.Random, limit: int
) -> list[float]:
    """Seconds after the start at which requests are due, within ``duration``, at most
    ``limit`` of them. Poisson: exponential gaps of mean ``1/rate``; fixed: ``1/rate``."""
    if rate <= 0 or duration <= 0 or limit <= 0:
        return []
    if arrival == "fixed":
        count = min(limit, int(rate * duration))
        return [n / rate for n in range(count)]
    out: list[float] = []
    t = rng.expovariate(rate)
    while t < duration and len(out) < limit:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def released(due: list[float], first: int, elapsed: float, most: int) -> int:
    """Where the requests to send now end: those from ``first`` on that are due by
    ``elapsed`` (never one before its time), at most ``most`` of them. ``due`` is sorted."""
    return bisect.bisect_right(due, elapsed, first, min(len(due), first + most))
