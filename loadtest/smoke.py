"""``smoke``: every part of the harness end to end on tiny data, in well under a minute.

A small city (400 persons, one facility of each type and level) in its own state folder,
``settle`` and ``mix`` for a few seconds each with the pgbench baseline, the integrity
checks, a seeded past day with its reconciliation and clearing timed, and one report. It
checks that the harness works, not how fast the service is: nothing here has a speed
threshold.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from loadtest import dayjobs, dayseed, integrity, loadrun, seed
from loadtest.environment import Environment
from loadtest.state import StateDir

PERSONS = 400
SETTLE_RATE = 25.0
MIX_RATE = 15.0
DAY_SETTLEMENTS = 300


def run(
    state: StateDir | None,
    database_url: str | None,
    workers: int,
    seconds: float,
    command: str,
) -> int:
    if state is None:
        state = StateDir(Path(tempfile.mkdtemp(prefix="loadtest-smoke-")))
    state.prepare()
    run_dir = state.new_run_dir("smoke")
    # A throw-away cluster: durability is not what the smoke checks.
    with Environment(
        state, run_dir, database_url=database_url, workers=workers, durable=False
    ) as env:
        out = asyncio.run(_smoke(env, state, run_dir, seconds, command))
    path = loadrun.write_report(run_dir, out)
    print(f"report: {path}")
    return 0 if out["ok"] else 1


async def _smoke(
    env: Environment, state: StateDir, run_dir: Path, seconds: float, command: str
) -> dict[str, Any]:
    seeded = await seed.seed(
        env,
        state,
        persons=PERSONS,
        layout="small",
        catalog_extra=40,
        workset_size=PERSONS // 2,
        batch=150,  # several batches, as at scale
    )
    settle = await loadrun.measure(
        env,
        state,
        loadrun.LoadOptions(
            scenario="settle",
            cards=PERSONS,
            pgbench_clients=2,
            pgbench_scale=1,
            warmup_seconds=1.0,
        ),
        rates=[SETTLE_RATE],
        step_seconds=seconds,
        p99_limit_ms=None,
        command=command,
        title="smoke: settle",
    )
    mix = await loadrun.measure(
        env,
        state,
        loadrun.LoadOptions(scenario="mix", cards=PERSONS, pgbench=False, warmup_seconds=0),
        rates=[MIX_RATE],
        step_seconds=seconds,
        p99_limit_ms=None,
        command=command,
        title="smoke: mix",
    )
    day = await dayseed.seed_day(env, state, count=DAY_SETTLEMENTS, day=None, reversed_percent=5)
    timed = await dayjobs.time_day(env, state, run_dir, None)
    # The seeded day and its clearing must leave the ledger proving, too.
    after = await integrity.check(env, [], [])
    out = dict(settle)
    out["title"] = "smoke"
    out["seed"] = seeded
    out["mix"] = mix
    out["day"] = {"seed": day, "timing": timed, "integrity": after}
    out["ok"] = all((settle["integrity"]["ok"], mix["integrity"]["ok"], timed["ok"], after["ok"]))
    return out
