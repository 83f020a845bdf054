"""Running the service: one process, or a supervisor with several worker processes.

Workers share the listening port (``SO_REUSEPORT``: the kernel spreads connections over
them); each has its own event loop, database pool and HSM connections, and holds no state
another worker needs. The supervisor forwards SIGTERM/SIGINT (each worker then drains its
in-flight requests, see aiohttp's graceful shutdown) and starts a new worker when one dies
unexpectedly, so a crashed or killed worker costs only its own in-flight requests.

Metrics: with several workers the supervisor gives them one private, fresh
``PROMETHEUS_MULTIPROC_DIR`` (it re-executes itself with the variable set, so that
prometheus-client sees it from the first import), each worker writes its values there, and a
scrape of any worker covers all of them. A dead worker's live gauges are dropped
(``mark_process_dead``); its counters stay counted. The folder is removed on exit.

Start-up failures (port taken, database unreachable once ``CARDSVC_DB_CONNECT_TIMEOUT`` has
passed, wrong credentials) raise ``StartupError``, which ``python -m cardsvc`` prints as one
line before it exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import NoReturn

import structlog
import uvloop
from aiohttp import web
from prometheus_client import multiprocess

from cardsvc import db
from cardsvc.config import Settings
from cardsvc.datakey import services as datakey
from cardsvc.ops.metrics import MULTIPROC_ENV

log = structlog.get_logger(__name__)

SHUTDOWN_TIMEOUT = 10.0  # seconds a worker waits for in-flight requests when told to stop
# Beyond the drain time, how long the supervisor waits for a worker before killing it.
STOP_MARGIN = 5
RESPAWN_PAUSE = 0.5  # between restarts of a crashing worker, so a crash loop does not spin
# A worker that dies this soon after it was started failed to start; this many such deaths in
# a row and the supervisor stops instead of restarting workers forever.
FAILED_START_WINDOW = 5.0
FAILED_STARTS_LIMIT = 5


# Set (to the folder) when this supervisor made the metrics folder itself and must remove it.
_OWNED_METRICS_ENV = "CARDSVC_OWNED_METRICS_DIR"


class StartupError(Exception):
    """The service cannot start; the message says why in one line."""


def _connect_progress(attempt: int, reason: str, left: float) -> None:
    log.warning("database_unreachable_retrying", attempt=attempt, reason=reason, left_s=round(left))


async def prepare(settings: Settings) -> list[str]:
    """Apply pending migrations, then check the data key is the database's (recording it on
    first use): a wrong key raises ``DataKeyError`` before anything listens. A database that
    does not answer is retried every second for ``CARDSVC_DB_CONNECT_TIMEOUT`` seconds."""
    try:
        conn = await db.connect_with_retry(
            settings.database_url, within=settings.db_connect_timeout, progress=_connect_progress
        )
    except db.DatabaseNotReached as exc:
        raise StartupError(str(exc)) from None
    try:
        applied = await db.migrate(conn)
        await datakey.check(conn, settings.data_key)
    finally:
        await conn.close()
    return applied


def check_port(host: str, port: int) -> None:
    """Refuse to start, in one line, when the address cannot be listened on (another process
    has the port, say), before any worker tries."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} on {host} is already in use by another process:"
                " stop that process or set CARDSVC_PORT to a free port"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _metrics_folder() -> Path:
    """The supervisor's metrics folder, emptied; re-executes this process first if the
    folder is not yet in its environment (prometheus-client reads it at import)."""
    if not os.environ.get(MULTIPROC_ENV):
        folder = tempfile.mkdtemp(prefix="cardsvc-metrics-")  # private to this user: 0700
        os.environ[MULTIPROC_ENV] = folder
        os.environ[_OWNED_METRICS_ENV] = folder
        _reexec()
    folder_path = Path(os.environ[MULTIPROC_ENV])
    folder_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in folder_path.glob("*.db"):  # values of an earlier run
        if not stale.name.endswith(f"_{os.getpid()}.db"):
            stale.unlink(missing_ok=True)
    return folder_path


def _reexec() -> NoReturn:
    """``python -m cardsvc serve`` again, in this process, with the environment as it is now
    (the settings are read from it again)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "cardsvc", "serve"])  # noqa: S606


def serve(settings: Settings) -> int:
    if settings.workers > 1 or os.environ.get(MULTIPROC_ENV):
        _metrics_folder()
    check_port(settings.host, settings.port)
    asyncio.run(prepare(settings))
    if settings.workers <= 1:
        print(f"cardsvc listening on http://{settings.host}:{settings.port}", flush=True)
        try:
            _run_worker(settings, reuse_port=False)
        except Exception as exc:
            if _unavailable(exc):  # a dependency gone since prepare: no traceback for that
                raise StartupError(f"the service could not start: {_described(exc)}") from None
            raise
        return 0
    return _supervise(settings)


def _unavailable(exc: BaseException) -> bool:
    return isinstance(exc, Exception) and db.as_service_error(exc) is not None


def _described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


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
        except BaseException as exc:
            if _unavailable(exc):  # the database gone, say: one line, no traceback
                log.error("worker_failed", error=_described(exc))
            else:
                log.exception("worker_failed")
            code = 1
        os._exit(code)
    return pid


def _supervise(settings: Settings) -> int:
    started = {_spawn(settings): time.monotonic() for _ in range(settings.workers)}
    workers = set(started)
    stopping = False
    failed_starts = 0
    gave_up = False

    def stop(
        signum: int, frame: FrameType | None, *, starting: signal.Signals | None = None
    ) -> None:
        """SIGTERM every worker (each drains its requests); with ``starting``, that signal to
        the workers still within their start instead (they have nothing to drain)."""
        nonlocal stopping
        stopping = True
        now = time.monotonic()
        for pid in workers:
            young = now - started.get(pid, 0.0) < FAILED_START_WINDOW
            try:
                os.kill(pid, starting if starting and young else signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop_and_bound(signum: int, frame: FrameType | None) -> None:
        stop(signum, frame)
        signal.alarm(int(SHUTDOWN_TIMEOUT) + STOP_MARGIN)

    def kill_the_rest(signum: int, frame: FrameType | None) -> None:
        """A worker that has not ended after its drain time never will (it is stuck):
        SIGKILL, so the service stops and no worker outlives it."""
        for pid in workers:
            log.error("worker_killed_at_stop", pid=pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, stop_and_bound)
    signal.signal(signal.SIGINT, stop_and_bound)
    signal.signal(signal.SIGALRM, kill_the_rest)
    print(
        f"cardsvc listening on http://{settings.host}:{settings.port}"
        f" ({settings.workers} workers, supervisor pid {os.getpid()})",
        flush=True,
    )
    while workers:
        pid, status = os.wait()
        workers.discard(pid)
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        lived = time.monotonic() - started.pop(pid, 0.0)
        if not stopping:
            failed_starts = failed_starts + 1 if lived < FAILED_START_WINDOW else 0
            gave_up = failed_starts >= FAILED_STARTS_LIMIT
            if gave_up:
                log.error("workers_keep_failing", failed_starts=failed_starts)
                stop(signal.SIGTERM, None, starting=signal.SIGKILL)
        if not stopping:
            log.warning("worker_died", pid=pid, status=status)
            time.sleep(RESPAWN_PAUSE)
            new = _spawn(settings)
            started[new] = time.monotonic()
            workers.add(new)
    owned = os.environ.get(_OWNED_METRICS_ENV)
    if owned and owned == os.environ.get(MULTIPROC_ENV):
        shutil.rmtree(owned, ignore_errors=True)
    if gave_up:
        raise StartupError(
            f"workers keep failing to start ({failed_starts} in a row within"
            f" {FAILED_START_WINDOW:g} s): see the 'worker_failed' log lines"
        )
    return 0
