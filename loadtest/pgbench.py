"""The same-run baseline: pgbench's built-in TPC-B-like script on the same PostgreSQL.

``pgbench -i -s SCALE`` into a separate database of the same server (once), then
``pgbench -M prepared -c C -j 2 -T SECONDS`` right before the service load. Its
transactions per second say what this machine's PostgreSQL does for five-statement
read-write transactions with durable commits, so "settlements per second ÷ pgbench tps"
compares the service with the database under it, on the same machine at the same time.
"""

from __future__ import annotations

import asyncio
import re
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import asyncpg

from cardsvc.devenv.pgcluster import ClusterError

_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
_LATENCY = re.compile(r"latency average = ([0-9.]+) ms")
_TXNS = re.compile(r"number of transactions actually processed: (\d+)")


def binary() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        return str(candidate)
    raise ClusterError("pgbench not found: install the Debian package postgresql-contrib")


def _connection(host: str, port: int, user: str) -> list[str]:
    return ["-h", host, "-p", str(port), "-U", user]


async def ensure_database(admin_url: str, dbname: str) -> bool:
    """Create ``dbname`` on the server if missing; True if it was created now."""
    conn = await asyncpg.connect(admin_url)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", dbname):
            return False
        await conn.execute(f'CREATE DATABASE "{dbname}"')
        return True
    finally:
        await conn.close()


async def initialised_scale(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        if not await conn.fetchval("SELECT to_regclass('pgbench_branches') IS NOT NULL"):
            return 0
        return int(await conn.fetchval("SELECT count(*) FROM pgbench_branches"))
    finally:
        await conn.close()


async def initialise(host: str, port: int, user: str, dbname: str, scale: int) -> float:
    started = time.perf_counter()
    cmd = [binary(), *_connection(host, port, user), "-i", "-q", "-s", str(scale), dbname]
    await _run(cmd)
    return time.perf_counter() - started


async def run(
    host: str, port: int, user: str, dbname: str, *, clients: int, seconds: int
) -> dict[str, Any]:
    threads = max(1, min(2, clients))
    cmd = [binary(), *_connection(host, port, user), "-M", "prepared"]
    cmd += ["-c", str(clients), "-j", str(threads), "-T", str(seconds), dbname]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = await _run(cmd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    tps = _TPS.search(out)
    if tps is None:
        raise ClusterError("pgbench printed no tps line")
    latency = _LATENCY.search(out)
    txns = _TXNS.search(out)
    return {
        "tps": float(tps.group(1)),
        "latency_avg_ms": float(latency.group(1)) if latency else None,
        "transactions": int(txns.group(1)) if txns else None,
        "clients": clients,
        "threads": threads,
        "seconds": seconds,
        # pgbench itself, reaped by ``_run``: the only child that ends meanwhile.
        "client_cpu_seconds": round(
            after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2
        ),
        "command": " ".join(cmd),
    }


async def _run(cmd: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await proc.communicate()
    except asyncio.CancelledError:  # Ctrl-C: do not leave pgbench running
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise ClusterError(f"pgbench failed: {err.decode(errors='replace').strip()[-500:]}")
    return out.decode() + err.decode()
