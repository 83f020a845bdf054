"""The machine's latency floor right before a run: one database round trip and one HTTP
round trip to the service, a few hundred times each, nothing else in flight.

On a shared machine (other engineers' tests run here too) these say how much of a
settlement's latency is plain scheduling delay: a settlement makes a dozen database round
trips, so its latency cannot be below about twelve of these.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg

from loadtest.environment import Environment

SAMPLES = 300
GAP_S = 0.002


async def _timed(call: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    times = []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(GAP_S)
    times.sort()

    def pick(q: float) -> float:
        return round(times[min(len(times) - 1, int(q * len(times)))], 3)

    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": round(times[-1], 3)}


async def floor(env: Environment) -> dict[str, Any]:
    conn = await asyncpg.connect(env.database_url)
    try:
        database = await _timed(lambda: conn.fetchval("SELECT 1"))
    finally:
        await conn.close()
    async with aiohttp.ClientSession() as http:

        async def healthz() -> None:
            async with http.get(env.base_url + "/healthz") as resp:
                await resp.read()

        service = await _timed(healthz)
    return {"database_select_1_ms": database, "service_healthz_ms": service, "samples": SAMPLES}
