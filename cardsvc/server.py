"""Running the service: one process, or a supervisor with several worker processes.

Workers share the listening port (``SO_REUSEPORT``: the kernel spreads connections over
them); each has its own event loop, database pool and HSM connections, and holds no state
another worker needs. The supervisor forwards SIGTERM/SIGINT (each worker then drains its
in-flight requests, see aiohttp's graceful shutdown) and starts a new worker when one dies
unexpectedly, so a crashed or killed worker costs only its own in-flight requests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from types import FrameType

import asyncpg
import structlog
import uvloop
from aiohttp import web

from cardsvc import db
from cardsvc.config import Settings
from cardsvc.datakey import services as datakey

log = structlog.get_logger(__name__)

SHUTDOWN_TIMEOUT = 10.0  # seconds a worker waits for in-flight requests when told to stop
RESPAWN_PAUSE = 0.5  # between restarts of a crashing worker, so a crash loop does not spin


async def prepare(settings: Settings) -> list[str]:
    """Apply pending migrations, then check the data key is the database's (recording it on
    first use): a wrong key raises ``DataKeyError`` before anything listens."""
    conn: db.Connection = await asyncpg.connect(settings.database_url)
    try:
        applied = await db.migrate(conn)
        await datakey.check(conn, settings.data_key)
    finally:
        await conn.close()
    return applied


def serve(settings: Settings) -> int:
    asyncio.run(prepare(settings))
    if settings.workers <= 1:
        print(f"cardsvc listening on http://{settings.host}:{settings.port}", flush=True)
        _run_worker(settings, reuse_port=False)
        return 0
    return _supervise(settings)


def _run_worker(settings: Settings, *, reuse_port: bool) -> None:
    from cardsvc.app import create_app

    uvloop.install()
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        reuse_port=reuse_port,
        print=None,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )


def _spawn(settings: Settings) -> int:
    pid = os.fork()
    if pid == 0:  # the worker
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        code = 0
        try:
            _run_worker(settings, reuse_port=True)
        except BaseException:
            log.exception("worker_failed")
            code = 1
        os._exit(code)
    return pid


def _supervise(settings: Settings) -> int:
    workers = {_spawn(settings) for _ in range(settings.workers)}
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in workers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        f"cardsvc listening on http://{settings.host}:{settings.port}"
        f" ({settings.workers} workers, supervisor pid {os.getpid()})",
        flush=True,
    )
    while workers:
        pid, status = os.wait()
        workers.discard(pid)
        if not stopping:
            log.warning("worker_died", pid=pid, status=status)
            time.sleep(RESPAWN_PAUSE)
            workers.add(_spawn(settings))
    return 0
