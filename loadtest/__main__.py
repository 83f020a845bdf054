"""``python -m loadtest``: seed a synthetic city, load the service open-loop, find the knee.

Every command starts its own environment (PostgreSQL cluster in the state folder unless
``--database-url``, hsm_stub, cardsvc with ``--workers`` processes), runs bounded in time
and count, and stops everything when it ends, fails or is interrupted. Reports go to
``<state>/<timestamp>-<command>/report.json`` (and ``report.png``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from cardsvc.logging import configure_logging
from loadtest import dayjobs, dayseed, integrity, loadrun, seed, smoke
from loadtest.environment import Environment
from loadtest.state import DEFAULT_VAR, StateDir

MAX_DURATION = 3600.0
MAX_STEPS = 60


def _positive(kind: type[float] | type[int], most: float) -> Any:
    def parse(text: str) -> float | int:
        value = kind(text)
        if not 0 < value <= most:
            raise argparse.ArgumentTypeError(f"must be > 0 and <= {most}")
        return value

    return parse


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--var", type=Path, default=DEFAULT_VAR, help="state folder (default var/loadtest)"
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="use this PostgreSQL instead of a private cluster in <var>/pgdata"
        " (default: $DATABASE_URL)",
    )
    p.add_argument(
        "--service-root",
        type=Path,
        default=None,
        help="run hsm_stub and cardsvc from this source tree (e.g. a baseline checkout made"
        " with `git archive`) instead of this one; use its own --var",
    )
    p.add_argument(
        "--workers",
        type=_positive(int, 64),
        default=int(os.environ.get("CARDSVC_WORKERS", "2")),
        help="cardsvc worker processes (CARDSVC_WORKERS; default 2)",
    )


def _load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", choices=("settle", "visit", "mix", "his"), default="settle")
    p.add_argument("--arrival", choices=("poisson", "fixed"), default="poisson")
    p.add_argument(
        "--generators",
        type=_positive(int, 8),
        default=1,
        help="load generator processes (default 1)",
    )
    p.add_argument(
        "--cards",
        type=_positive(int, 1_000_000),
        default=20_000,
        help="cards of the working set to use (default 20000)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed of the schedule and bodies")
    p.add_argument("--request-timeout", type=_positive(float, 300), default=30.0)
    p.add_argument("--max-requests", type=_positive(int, 10_000_000), default=1_000_000)
    p.add_argument(
        "--warmup-seconds",
        type=float,
        default=5.0,
        help="unrecorded load at the first rate before measuring (default 5)",
    )
    p.add_argument("--no-pgbench", action="store_true", help="skip the pgbench baseline")
    p.add_argument("--pgbench-clients", type=_positive(int, 100), default=8)
    p.add_argument("--pgbench-scale", type=_positive(int, 1000), default=10)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("seed", help="create or grow the synthetic city (COPY)")
    _common(p)
    p.add_argument("--persons", type=_positive(int, 50_000_000), default=100_000)
    p.add_argument("--reset", action="store_true", help="drop the city's database first")
    p.add_argument("--layout", choices=("city", "small"), default="city")
    p.add_argument("--catalog-extra", type=int, default=300, help="generated catalog items")
    p.add_argument("--workset", type=_positive(int, 1_000_000), default=20_000)
    p.add_argument("--batch", type=_positive(int, 30_000), default=20_000)

    p = sub.add_parser("run", help="one open-loop run at a fixed rate")
    _common(p)
    _load_options(p)
    p.add_argument("--rate", type=_positive(float, 100_000), required=True, help="operations/s")
    p.add_argument("--duration", type=_positive(float, MAX_DURATION), default=30.0)

    p = sub.add_parser("step", help="raise the rate until p99 passes the limit: the knee")
    _common(p)
    _load_options(p)
    p.add_argument("--start", type=_positive(float, 100_000), default=50.0)
    p.add_argument("--step", type=_positive(float, 100_000), default=50.0)
    p.add_argument("--max", type=_positive(float, 100_000), default=1000.0)
    p.add_argument("--p99-limit-ms", type=_positive(float, 60_000), default=50.0)
    p.add_argument("--step-seconds", type=_positive(float, MAX_DURATION), default=20.0)
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="after p99 passes the limit, go on raising the rate until the service no longer"
        " keeps up (achieved < 90%% of offered, or errors): the whole curve",
    )

    p = sub.add_parser("seed-settlements", help="COPY a day of settlements (scale tests)")
    _common(p)
    p.add_argument("--count", type=_positive(int, 20_000_000), default=1_000_000)
    p.add_argument(
        "--date",
        type=dt.date.fromisoformat,
        default=None,
        help="business date (default: yesterday, Asia/Shanghai)",
    )
    p.add_argument("--reversed-percent", type=float, default=1.0)

    p = sub.add_parser("time-day", help="time a reconciliation and a clearing run for a day")
    _common(p)
    p.add_argument("--date", type=dt.date.fromisoformat, default=None)

    p = sub.add_parser("check", help="the integrity checks alone: ledger proof, balances")
    _common(p)

    p = sub.add_parser("smoke", help="a few seconds on tiny data, checks included")
    _common(p)
    p.set_defaults(var=None)  # a fresh temporary state folder unless --var is given
    p.add_argument("--seconds", type=_positive(float, 60), default=2.0)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # The harness uses cardsvc's modules (migrations, HSM client): only their warnings.
    configure_logging("console", "warning")
    command = "python -m loadtest " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.command == "smoke":
        smoke_state = StateDir(args.var) if args.var else None
        return smoke.run(smoke_state, args.database_url, args.workers, args.seconds, command)
    state = StateDir(args.var)
    state.prepare()
    state.lock()
    run_dir = state.new_run_dir(args.command)
    if args.command == "seed" and args.reset:
        seed.reset(state, args.database_url)
    with Environment(
        state,
        run_dir,
        database_url=args.database_url,
        workers=args.workers,
        service_root=args.service_root,
    ) as env:
        return asyncio.run(_dispatch(args, env, state, run_dir, command))


async def _dispatch(
    args: argparse.Namespace, env: Environment, state: StateDir, run_dir: Path, command: str
) -> int:
    if args.command == "seed":
        summary = await seed.seed(
            env,
            state,
            persons=args.persons,
            layout=args.layout,
            catalog_extra=args.catalog_extra,
            workset_size=args.workset,
            batch=args.batch,
        )
        summary["command"] = command
        print(loadrun.report_line(summary))
        loadrun.write_report(run_dir, summary)
        return 0
    if args.command in ("run", "step"):
        opts = loadrun.LoadOptions(
            scenario=args.scenario,
            arrival=args.arrival,
            generators=args.generators,
            cards=args.cards,
            seed=args.seed,
            request_timeout=args.request_timeout,
            max_requests=args.max_requests,
            pgbench=not args.no_pgbench,
            pgbench_clients=args.pgbench_clients,
            pgbench_scale=args.pgbench_scale,
            warmup_seconds=min(max(0.0, args.warmup_seconds), 600.0),
        )
        if args.command == "run":
            rates, seconds, limit = [args.rate], args.duration, None
        else:
            rates = _rates(args.start, args.step, args.max)
            seconds, limit = args.step_seconds, args.p99_limit_ms
        out = await loadrun.measure(
            env,
            state,
            opts,
            rates=rates,
            step_seconds=seconds,
            p99_limit_ms=limit,
            command=command,
            title=f"cardsvc {args.scenario}, {args.workers} workers",
            keep_going=args.command == "step" and args.keep_going,
        )
        path = loadrun.write_report(run_dir, out)
        print(loadrun.report_line(_headline(out)))
        print(f"report: {path}")
        return 0 if out["integrity"]["ok"] else 1
    if args.command == "seed-settlements":
        summary = await dayseed.seed_day(
            env, state, count=args.count, day=args.date, reversed_percent=args.reversed_percent
        )
        summary["command"] = command
        loadrun.write_report(run_dir, summary)
        print(loadrun.report_line(summary))
        return 0
    if args.command == "time-day":
        summary = await dayjobs.time_day(env, state, run_dir, args.date)
        summary["command"] = command
        loadrun.write_report(run_dir, summary)
        print(loadrun.report_line(summary))
        return 0 if summary["ok"] else 1
    if args.command == "check":
        result = await integrity.check(env, [], [])
        result["command"] = command
        loadrun.write_report(run_dir, result)
        print(loadrun.report_line(result))
        return 0 if result["ok"] else 1
    raise AssertionError(args.command)


def _rates(start: float, step: float, most: float) -> list[float]:
    rates: list[float] = []
    rate = start
    while rate <= most + 1e-9 and len(rates) < MAX_STEPS:
        rates.append(round(rate, 3))
        rate += step
    return rates


def _headline(out: dict[str, Any]) -> dict[str, Any]:
    return {
        "knee": out.get("knee"),
        "saturation": out.get("saturation"),
        "ratio": out.get("ratio"),
        "pgbench_tps": out.get("pgbench", {}).get("tps"),
        "cpu_budget": out.get("cpu_budget"),
        "integrity_ok": out["integrity"]["ok"],
    }


def _main() -> int:
    try:
        return main()
    except KeyboardInterrupt:  # the environment was stopped on the way out
        print("interrupted: every child process was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(_main())
