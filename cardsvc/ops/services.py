"""Readiness and the per-worker monitor behind the gauges.

Readiness means "can serve its main job": settling claims needs the database and not the HSM
(terminal sessions and card tokens were made earlier), so only the database decides it; a
dependency that is down while the database answers is reported as ``degraded``, never as
unready, so a load balancer does not drain every worker because the HSM is away.

The monitor runs in each worker: every ``interval`` it measures how late the event loop woke
it (the lag), samples the database pool, and every ``DEPENDENCY_EVERY`` turns asks the
database and the HSM whether they answer, for ``cardsvc_dependency_up``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import structlog

from cardsvc import db
from cardsvc.errors import ServiceUnavailable
from cardsvc.hsm.client import HsmClient
from cardsvc.ops import gcpause, metrics
from cardsvc.ops.models import Readiness

log = structlog.get_logger(__name__)

MONITOR_INTERVAL = 1.0  # seconds between samples of the loop lag and the pool
DEPENDENCY_EVERY = 5  # monitor turns between dependency checks


async def hsm_reachable(hsm: HsmClient) -> bool:
    try:
        return await hsm.echo(b"ready") == b"ready"
    except ServiceUnavailable:
        return False


def readiness_of(*, database: bool, hsm: bool) -> Readiness:
    degraded = [] if hsm else ["hsm"]
    status: Literal["ok", "degraded", "unavailable"]
    if not database:
        status = "unavailable"
    elif degraded:
        status = "degraded"
    else:
        status = "ok"
    return Readiness(status=status, database=database, hsm=hsm, degraded=degraded)


def pool_waiting(pool: Any) -> int:
    """Acquirers waiting for a connection. asyncpg has no public count: its pool hands out
    connections through an ``asyncio.Queue``, whose waiting getters are counted (0 if a
    future asyncpg does it otherwise)."""
    getters = getattr(getattr(pool, "_queue", None), "_getters", ())
    return sum(1 for waiter in getters if not waiter.done())


class Health:
    def __init__(self, pool: db.Pool, hsm: HsmClient) -> None:
        self._pool = pool
        self._hsm = hsm

    async def readiness(self) -> Readiness:
        database, hsm = await asyncio.gather(db.ping(self._pool), hsm_reachable(self._hsm))
        metrics.DEPENDENCY_UP.labels("database").set(int(database))
        metrics.DEPENDENCY_UP.labels("hsm").set(int(hsm))
        return readiness_of(database=database, hsm=hsm)

    def sample_pool(self) -> None:
        size = self._pool.get_size()
        metrics.DB_POOL_SIZE.set(size)
        metrics.DB_POOL_IN_USE.set(size - self._pool.get_idle_size())
        metrics.DB_POOL_WAITING.set(pool_waiting(self._pool))

    async def monitor(self, interval: float = MONITOR_INTERVAL) -> None:
        loop = asyncio.get_running_loop()
        turn = 0
        while True:
            if turn % DEPENDENCY_EVERY == 0:
                try:
                    await self.readiness()
                except Exception:
                    log.exception("dependency_check_failed")
            turn += 1
            started = loop.time()
            await asyncio.sleep(interval)
            metrics.EVENT_LOOP_LAG.set(max(0.0, loop.time() - started - interval))
            self.sample_pool()
            gcpause.flush()
