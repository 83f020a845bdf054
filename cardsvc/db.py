"""PostgreSQL access: the connection pool, migrations, and mapping of driver failures.

Services receive the pool and own their transactions. Driver failures that mean "the
database is not there or too slow" become ``ServiceUnavailable`` here, by exception class,
so the edge answers 503 instead of 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import structlog
from asyncpg import Connection, Pool

from cardsvc.config import Settings
from cardsvc.errors import InvalidRequest, ServiceUnavailable

log = structlog.get_logger(__name__)

# cardsvc/schema is schema/ (a link in the checkout, package data in an installed wheel).
MIGRATIONS_DIR = Path(__file__).resolve().parent / "schema" / "migrations"
# Any fixed number: serialises migration runs of concurrently starting workers.
_MIGRATION_LOCK = 0x63617264
APPLICATION_NAME = "cardsvc"  # of the service's pooled connections (pg_stat_activity)

__all__ = [
    "Connection",
    "Pool",
    "as_input_error",
    "as_service_error",
    "create_pool",
    "migrate",
    "transaction",
]


class DatabaseUnavailable(ServiceUnavailable):
    default_code = "DATABASE_UNAVAILABLE"


class DatabaseTimeout(ServiceUnavailable):
    default_code = "DATABASE_TIMEOUT"


# Failures that say the server is unreachable, restarting or shutting down.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    # A connection left mid-protocol by a server that went away (seen on release while the
    # server shuts down): the connection is unusable, the database is what failed.
    asyncpg.exceptions.InternalClientError,
)
TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.LockNotAvailableError,
    # Two transactions waited for each other and the database cancelled this one: nothing
    # of it happened, and the same request again goes through.
    asyncpg.exceptions.DeadlockDetectedError,
)


def as_service_error(exc: BaseException) -> ServiceUnavailable | None:
    """The 503 a driver exception stands for, or None if it is not an availability fault."""
    if isinstance(exc, TIMEOUT_ERRORS):
        return DatabaseTimeout("the database did not answer in time")
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return DatabaseUnavailable("the database is unavailable")
    return None


def as_input_error(exc: BaseException) -> InvalidRequest | None:
    """A value the database cannot store (a NUL in text, a number out of range) is bad
    input that slipped past validation: 400, not 500."""
    if isinstance(exc, asyncpg.exceptions.DataError):
        return InvalidRequest("a value in the request cannot be stored", code="INVALID_VALUE")
    return None


async def _release(conn: Connection) -> None:
    """What a connection needs before it serves the next request: only the end of a
    transaction a cancelled request left open. asyncpg's default reset (unlock advisory
    locks, close cursors, UNLISTEN, RESET ALL) is a round trip per release for state this
    service never leaves on a connection."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(
    settings: Settings, init: Callable[[Connection], Awaitable[None]] | None = None
) -> Pool:
    """The pool; ``init`` runs on every new connection before it serves anything."""
    pool: Pool = await asyncpg.create_pool(
        settings.database_url,
        init=init,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        command_timeout=settings.db_command_timeout,
        reset=_release,
        # Bounds a statement stuck behind a lock server-side too, so the connection is
        # usable again right after the client gives up.
        server_settings={
            "statement_timeout": str(int(settings.db_command_timeout * 1000)),
            "lock_timeout": str(int(settings.db_command_timeout * 1000)),
            "timezone": "UTC",
            # Short statements on a few rows: compiling one with JIT (for a batch whose
            # JSON input the planner guesses at 100 rows) costs far more than it saves.
            "jit": "off",
            # How rotate-data-key tells the service is using the database.
            "application_name": APPLICATION_NAME,
        },
    )
    return pool


async def extend_bounds(conn: Connection, seconds: float, *, lock_waits: bool = False) -> None:
    """Give the current transaction's statements (and, with ``lock_waits``, its lock waits)
    ``seconds`` instead of the pool's bound: for the long jobs that read or rewrite whole
    tables."""
    ms = int(seconds * 1000)
    sql = f"SET LOCAL statement_timeout = {ms}"
    await conn.execute(sql + (f"; SET LOCAL lock_timeout = {ms}" if lock_waits else ""))


@asynccontextmanager
async def transaction(pool: Pool) -> AsyncIterator[Connection]:
    """A pooled connection inside a transaction; commits on success, rolls back on error."""
    async with pool.acquire() as conn, conn.transaction():
        yield conn


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    return sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))


async def migrate(conn: Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the migrations not yet applied, in order, each in its own transaction."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for path in migration_files(directory):
            if path.stem in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", path.stem)
            log.info("migration_applied", version=path.stem)
            applied.append(path.stem)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


class DatabaseNotReached(Exception):
    """No connection at start: the message says where (never the password) and why."""


# At start these are worth waiting out (the server is not up yet, or starting, or full).
_RETRY_AT_START: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)


def where(database_url: str) -> str:
    """``host:port/database`` of a URL, for messages: no user, no password."""
    parts = urlsplit(database_url)
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 5432}{parts.path or ''}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def connect_with_retry(
    database_url: str,
    *,
    within: float,
    every: float = 1.0,
    progress: Callable[[int, str, float], None] | None = None,
) -> Connection:
    """One connection, trying every ``every`` seconds for ``within`` seconds in all while the
    server cannot be reached; ``DatabaseNotReached`` then, or at once for a refusal that
    waiting does not cure (wrong password, no such database)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    attempt = 0
    while True:
        attempt += 1
        left = deadline - loop.time()
        try:
            conn: Connection = await asyncpg.connect(database_url, timeout=max(1.0, min(left, 10)))
            return conn
        except _RETRY_AT_START as exc:
            left = deadline - loop.time()
            if left <= 0:
                raise DatabaseNotReached(
                    f"cannot reach the database at {where(database_url)} after {within:g} s:"
                    f" {_reason(exc)} (is PostgreSQL running? is DATABASE_URL right?)"
                ) from None
            if progress is not None:
                progress(attempt, _reason(exc), left)
            await asyncio.sleep(min(every, left))
        except asyncpg.PostgresError as exc:
            raise DatabaseNotReached(
                f"the database at {where(database_url)} refused the connection: {_reason(exc)}"
            ) from None


async def migrate_url(database_url: str) -> list[str]:
    conn: Connection = await asyncpg.connect(database_url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def ping(pool: Pool, within_s: float = 1.0) -> bool:
    try:
        async with asyncio.timeout(within_s):
            value: Any = await pool.fetchval("SELECT 1")
            return bool(value == 1)
    except (*UNAVAILABLE_ERRORS, *TIMEOUT_ERRORS):
        return False
