"""``run`` and ``step``: pgbench baseline, open-loop steps, integrity, report.

A ``run`` is one step at one rate. ``step`` raises the rate from ``--start`` by ``--step``
until p99 passes the limit or errors appear (or ``--max`` is reached), and reports the
highest rate that held: the knee.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import multiprocessing
import os
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
from hdrh.histogram import HdrHistogram

from cardsvc.clock import business_date
from loadtest import budget, gateway, generator, integrity, pgbench, probes, report
from loadtest import city as city_layout
from loadtest.admin import Admin
from loadtest.cpu import Sampler
from loadtest.environment import Environment
from loadtest.sessions import Cache, GeneratorCache
from loadtest.state import City, StateDir, WorkCard

_SETTINGS = (
    "synchronous_commit",
    "fsync",
    "full_page_writes",
    "shared_buffers",
    "max_connections",
    "max_wal_size",
)
READY_TIMEOUT = 900.0  # signing in; a step's card-token preparation is also bounded by it
PAUSE_BETWEEN_STEPS = 2.0
BACKENDS_REAPED = 0.5  # seconds for pgbench's backends to exit after it did


class LoadOptions(msgspec.Struct, kw_only=True):
    scenario: str
    arrival: str = "poisson"
    generators: int = 1
    cards: int = 20_000
    seed: int = 1
    request_timeout: float = 30.0
    max_in_flight: int = 20_000
    connections: int = 512
    max_requests: int = 1_000_000
    pgbench: bool = True
    pgbench_clients: int = 8
    pgbench_scale: int = 10
    # Unrecorded load at the first rate before the steps: fills the service's connection
    # pools and session caches, which a freshly started service does not have yet.
    warmup_seconds: float = 5.0


class LoadError(RuntimeError):
    """The run could not be made (no city seeded, a generator failed)."""


class Generators:
    """The generator processes and their pipes."""

    def __init__(self) -> None:
        self.processes: list[tuple[BaseProcess, Connection]] = []

    def spawn(self, plans: list[generator.Plan]) -> None:
        ctx = multiprocessing.get_context("spawn")
        for plan in plans:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=generator.main, args=(child, plan), daemon=True)
            proc.start()
            child.close()
            self.processes.append((proc, parent))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.processes if p.pid is not None]

    async def receive_all(self, kind: str, wait_s: float) -> list[Any]:
        return await asyncio.gather(*(_receive(conn, kind, wait_s) for _, conn in self.processes))

    def send_all(self, message: Any) -> None:
        for _, conn in self.processes:
            conn.send(message)

    def close(self) -> None:
        for proc, conn in self.processes:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            conn.close()
        self.processes.clear()


async def _receive(conn: Connection, kind: str, wait_s: float) -> Any:
    # Polled, not waited for in a thread: Ctrl-C must not wait for a blocked thread.
    deadline = time.monotonic() + wait_s
    while not conn.poll():
        if time.monotonic() > deadline:
            raise LoadError(f"a generator sent no {kind} within {wait_s:.0f} s")
        await asyncio.sleep(0.02)
    try:
        got, payload = conn.recv()
    except EOFError:
        raise LoadError("a generator exited") from None
    if got == "error":
        raise LoadError(f"a generator failed: {payload}")
    return payload


def _merge(encoded: list[bytes]) -> HdrHistogram:
    total = generator.histogram()
    for blob in encoded:
        total.add(HdrHistogram.decode(blob))
    return total


def summarise_step(
    rate: float, duration: float, outcomes: list[generator.Outcome], cpu: dict[str, Any]
) -> dict[str, Any]:
    elapsed = max(duration, *(o.last_end for o in outcomes))
    ok = sum(o.ok for o in outcomes)
    settlements = sum(len(o.settlements) for o in outcomes)
    errors: dict[str, int] = {}
    ok_by_op: dict[str, int] = {}
    for o in outcomes:
        for key, n in o.errors.items():
            errors[key] = errors.get(key, 0) + n
        for key, n in o.ok_by_op.items():
            ok_by_op[key] = ok_by_op.get(key, 0) + n
    ops = sorted({k for o in outcomes for k in o.per_op})
    kinds = sorted({k for o in outcomes for k in o.service})
    gen_cpu = [round(o.cpu_seconds / max(1e-9, o.wall_seconds), 2) for o in outcomes]
    return {
        "offered_rate": rate,
        "duration_s": duration,
        "elapsed_s": round(elapsed, 3),
        "scheduled": sum(o.scheduled for o in outcomes),
        "started": sum(o.started for o in outcomes),
        "ok": ok,
        "ok_by_operation": ok_by_op,
        "error_count": sum(errors.values()),
        "errors": errors,
        "achieved_rate": round(ok / elapsed, 2),
        "settlements_per_s": round(settlements / elapsed, 2),
        "reversals": sum(len(o.reversals) for o in outcomes),
        "latency_ms": report.latency_ms(_merge([o.latency for o in outcomes])),
        "per_operation_ms": {
            op: report.latency_ms(_merge([o.per_op[op] for o in outcomes if op in o.per_op]))
            for op in ops
        },
        "service_ms": {
            kind: report.latency_ms(
                _merge([o.service[kind] for o in outcomes if kind in o.service])
            )
            for kind in kinds
        },
        "send_lag_ms": report.latency_ms(_merge([o.send_lag for o in outcomes])),
        "timeline_max_ms": [
            max(v) for v in zip(*(o.timeline_max_ms for o in outcomes), strict=True)
        ],
        "generator_cpu_utilisation": gen_cpu,
        "cpu": cpu,
        "cpu_ms_per_operation": budget.per_operation_ms(cpu, ok),
    }


async def _deliverable(database_url: str, cards: list[WorkCard]) -> list[str]:
    """Women of the working set who have had no 52 delivery this year."""
    women = [c.psn_no for c in cards if c.gend == "2" and "510" in c.insutypes]
    conn = await asyncpg.connect(database_url)
    try:
        done = await conn.fetch(
            "SELECT psn_no FROM year_states WHERE psn_no = ANY($1::text[]) AND year = $2"
            " AND deliveries_510 > 0",
            women,
            business_date().year,
        )
    finally:
        await conn.close()
    delivered = {r["psn_no"] for r in done}
    return [p for p in women if p not in delivered]


async def dataset(database_url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            """
            SELECT (SELECT count(*) FROM persons) AS persons,
                   (SELECT count(*) FROM cards) AS cards,
                   (SELECT count(*) FROM settlements) AS settlements,
                   (SELECT count(*) FROM ledger_entries) AS ledger_entries,
                   pg_database_size(current_database()) AS bytes,
                   version() AS version,
                   current_setting('synchronous_commit') AS synchronous_commit,
                   current_setting('fsync') AS fsync,
                   current_setting('full_page_writes') AS full_page_writes,
                   current_setting('shared_buffers') AS shared_buffers,
                   current_setting('max_connections') AS max_connections,
                   current_setting('max_wal_size') AS max_wal_size
            """
        )
    finally:
        await conn.close()
    out = dict(row)
    out["database_mb"] = round(out.pop("bytes") / 1e6, 1)
    return out


async def baseline(env: Environment, opts: LoadOptions, seconds: int) -> dict[str, Any]:
    host, port, user = env.pg_address
    dbname = f"{env.database_url.rsplit('/', 1)[1].split('?')[0]}_pgbench"
    admin_url = env.database_url.rsplit("/", 1)[0] + "/postgres"
    await pgbench.ensure_database(admin_url, dbname)
    bench_url = env.database_url.rsplit("/", 1)[0] + f"/{dbname}"
    init_s = None
    if await pgbench.initialised_scale(bench_url) != opts.pgbench_scale:
        init_s = await pgbench.initialise(host, port, user, dbname, opts.pgbench_scale)
    server = env.postgres_pids()  # none for a DATABASE_URL server: its CPU is not ours to read
    sampler = Sampler({"postgres": server})
    sampler.start()
    result = await pgbench.run(
        host, port, user, dbname, clients=opts.pgbench_clients, seconds=seconds
    )
    # Its backends have exited: the postmaster reaps them, and their CPU time counts in
    # the postmaster's children's time, which the sampler reads.
    await asyncio.sleep(BACKENDS_REAPED)
    cpu = sampler.stop()
    result["server_cpu_seconds"] = cpu["postgres"]["cpu_seconds"] if server else None
    result["cpu_ms_per_transaction"] = (
        budget.baseline_ms(
            cpu["postgres"]["cpu_seconds"], result["client_cpu_seconds"], result["transactions"]
        )
        if server and result["transactions"]
        else None
    )
    result["scale"] = opts.pgbench_scale
    result["init_seconds"] = round(init_s, 1) if init_s is not None else None
    return result


async def database_identity(database_url: str) -> str:
    """Cluster and database identity: cached sessions belong to exactly this database."""
    conn = await asyncpg.connect(database_url)
    try:
        return str(
            await conn.fetchval(
                "SELECT (SELECT system_identifier FROM pg_control_system())::text || ':' || oid"
                " FROM pg_database WHERE datname = current_database()"
            )
        )
    finally:
        await conn.close()


def _plans(
    env: Environment,
    c: City,
    cards: list[WorkCard],
    opts: LoadOptions,
    deliverable: list[str],
    cache: Cache,
    gateways: list[gateway.GatewayCred],
) -> list[generator.Plan]:
    facilities = [f for f in c.facilities if city_layout.loaded(f)]
    tag = f"{int(time.time()) % 10**8:x}"
    return [
        generator.Plan(
            index=g,
            base_url=env.base_url,
            scenario=opts.scenario,
            seed=opts.seed,
            run_tag=tag,
            terminals=c.terminals,
            facilities=facilities,
            cards=cards[g :: opts.generators],
            items=city_layout.items(c.catalog_items),
            deliverable=deliverable,
            request_timeout=opts.request_timeout,
            max_in_flight=opts.max_in_flight,
            connections=opts.connections,
            cache=GeneratorCache(sessions=cache.generators.get(g, GeneratorCache()).sessions),
            session_ttl=float(env.service_env.get("CARDSVC_SESSION_TTL", 43200)),
            gateways=gateways,
        )
        for g in range(opts.generators)
    ]


async def gateway_clients(env: Environment, c: City) -> list[gateway.GatewayCred]:
    """``his``: a gateway client for each loaded pharmacy with the 310 agreement (new ones
    each run: a secret is shown only when its client is registered)."""
    pharmacies = [
        f.fixmedins_code
        for f in c.facilities
        if city_layout.loaded(f) and f.type == "pharmacy" and "310" in f.agreements
    ]
    creds = []
    async with aiohttp.ClientSession() as http:
        admin = Admin(http, env.base_url, env.operator_token)
        for code in pharmacies:
            made = await admin.call("POST", "/v1/gateway-clients", {"fixmedins_code": code})
            creds.append(
                gateway.GatewayCred(
                    fixmedins_code=code, paasid=made["paasid"], secret=made["secret"]
                )
            )
    return creds


async def measure(
    env: Environment,
    state: StateDir,
    opts: LoadOptions,
    *,
    rates: list[float],
    step_seconds: float,
    p99_limit_ms: float | None,
    command: str,
    title: str,
    keep_going: bool = False,
) -> dict[str, Any]:
    c = state.load_city()
    cards = state.load_workset()[: opts.cards]
    if c is None or not cards:
        raise LoadError("no city here: run `python -m loadtest seed` first")
    started_at = dt.datetime.now(dt.UTC)
    data = await dataset(env.database_url)
    out: dict[str, Any] = {
        "title": title,
        "command": command,
        "started_at": started_at.isoformat(),
        "machine": report.machine(env.workers, str(data.pop("version")), env.service_root),
        "database": {
            "where": (
                f"private cluster {env.state.pgdata}" if env.cluster else "DATABASE_URL server"
            ),
            "durable": data["fsync"] == "on" and data["synchronous_commit"] == "on",
            **{k: data[k] for k in _SETTINGS},
        },
        "dataset": {
            **{k: data[k] for k in data if k not in _SETTINGS},
            "working_set_cards": len(cards),
            "facilities_loaded": sum(1 for f in c.facilities if city_layout.loaded(f)),
            "terminals": len(c.terminals),
        },
        "service_settings": env.service_env,
        "options": msgspec.to_builtins(opts),
        "p99_limit_ms": p99_limit_ms,
    }
    out["latency_floor"] = await probes.floor(env)
    if opts.pgbench:
        out["pgbench"] = await baseline(env, opts, max(1, round(step_seconds)))
    gens = Generators()
    settlements: list[tuple[str, str, str]] = []
    reversals: list[str] = []
    steps: list[dict[str, Any]] = []
    knee: dict[str, Any] | None = None
    stopped = "reached the last rate"
    try:
        cache = state.load_sessions(await database_identity(env.database_url))
        deliverable = await _deliverable(env.database_url, cards)
        creds = await gateway_clients(env, c) if opts.scenario == "his" else []
        gens.spawn(_plans(env, c, cards, opts, deliverable, cache, creds))
        ready: list[generator.Ready] = await gens.receive_all("ready", READY_TIMEOUT)
        for g, r in enumerate(ready):
            cache.generators[g] = GeneratorCache(sessions=r.cache.sessions)
        state.save_sessions(cache)
        prep: dict[str, Any] = {
            "terminals_signed_in": sum(r.terminals_signed_in for r in ready),
            "sessions_resumed": sum(r.sessions_resumed for r in ready),
            "seconds": round(max(r.prep_seconds for r in ready), 1),
            # Made before each step's timed phase, one per planned settlement (settle).
            "card_tokens": 0,
            "card_token_seconds": 0.0,
            "errors": {},
        }
        out["preparation"] = prep
        groups = {
            "cardsvc": env.pids("cardsvc"),
            "postgres": env.postgres_pids(),
            "hsm_stub": env.pids("hsm_stub"),
            "generators": gens.pids,
        }
        if opts.warmup_seconds > 0:
            await _prepare_step(gens, opts, -1, rates[0], opts.warmup_seconds, prep)
            warm = await _step(gens, opts, opts.warmup_seconds)
            for o in warm:
                settlements.extend(o.settlements)
                reversals.extend(o.reversals)
            out["warmup"] = {"rate": rates[0], "seconds": opts.warmup_seconds}
        for number, rate in enumerate(rates):
            await _prepare_step(gens, opts, number, rate, step_seconds, prep)
            sampler = Sampler(groups)
            sampler.start()
            outcomes = await _step(gens, opts, step_seconds)
            summary = summarise_step(rate, step_seconds, outcomes, sampler.stop())
            steps.append(summary)
            for o in outcomes:
                settlements.extend(o.settlements)
                reversals.extend(o.reversals)
            _print_step(summary)
            failed = _failed(summary, p99_limit_ms)
            if failed and stopped == "reached the last rate":
                stopped = failed
            if not failed and stopped == "reached the last rate":
                knee = summary
            if (failed and not keep_going) or _saturated(summary):
                break
            if number + 1 < len(rates):
                await asyncio.sleep(PAUSE_BETWEEN_STEPS)
    finally:
        gens.close()
    out["steps"] = steps
    within = _highest_within(steps, p99_limit_ms)
    out["knee"] = _knee(knee, stopped, within) if p99_limit_ms is not None else None
    out["saturation"] = _saturation(steps)
    if steps and "pgbench" in out:
        out["ratio"] = _ratio(
            out["pgbench"]["tps"], knee if p99_limit_ms is not None else None, steps, within
        )
        out["cpu_budget"] = _cpu_budget(out["pgbench"], steps)
        if out["cpu_budget"]:
            _print_budget(out["cpu_budget"])
    out["integrity"] = await integrity.check(env, settlements, reversals)
    out["finished_at"] = dt.datetime.now(dt.UTC).isoformat()
    out["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return out


async def _prepare_step(
    gens: Generators,
    opts: LoadOptions,
    number: int,
    rate: float,
    seconds: float,
    prep: dict[str, Any],
) -> None:
    """The step's schedule and its card tokens (untimed, before the CPU sampler starts);
    their count, time and errors are added to ``prep``."""
    gens.send_all(
        generator.Step(
            number=number,
            rate=rate / opts.generators,
            duration=seconds,
            arrival=opts.arrival,
            max_requests=opts.max_requests // opts.generators,
        )
    )
    prepared: list[generator.Prepared] = await gens.receive_all("prepared", READY_TIMEOUT)
    prep["card_tokens"] += sum(p.tokens for p in prepared)
    prep["card_token_seconds"] = round(
        prep["card_token_seconds"] + max(p.seconds for p in prepared), 1
    )
    for p in prepared:
        for key, count in p.errors.items():
            prep["errors"][key] = prep["errors"].get(key, 0) + count


async def _step(gens: Generators, opts: LoadOptions, seconds: float) -> list[generator.Outcome]:
    """Run the prepared step: every generator starts its schedule at the same instant."""
    gens.send_all(generator.Start(start_wall=time.time() + 1.0))
    outcomes: list[generator.Outcome] = await gens.receive_all(
        "step", seconds + 4 * opts.request_timeout + 60
    )
    return outcomes


def _failed(summary: dict[str, Any], p99_limit_ms: float | None) -> str | None:
    if p99_limit_ms is None:
        return None
    if summary["error_count"]:
        return f"errors at {summary['offered_rate']}/s: {summary['errors']}"
    p99 = summary["latency_ms"].get("p99")
    if p99 is None:
        return f"no operation completed at {summary['offered_rate']}/s"
    if p99 > p99_limit_ms:
        return f"p99 {p99} ms > {p99_limit_ms} ms at {summary['offered_rate']}/s"
    return None


def _ratio(
    tps: float,
    knee: dict[str, Any] | None,
    steps: list[dict[str, Any]],
    within: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Settlements per second ÷ pgbench transactions per second, at the knee, at the
    highest step within the latency limit, and at the highest throughput of the run."""
    best = max(s["settlements_per_s"] for s in steps)
    at_knee = knee["settlements_per_s"] if knee else None
    at_within = within["settlements_per_s"] if within else None
    return {
        "pgbench_tps": tps,
        "settlements_per_s_at_knee": at_knee,
        "ratio_at_knee": round(at_knee / tps, 4) if at_knee is not None else None,
        "settlements_per_s_at_highest_within_limit": at_within,
        "ratio_at_highest_within_limit": (
            round(at_within / tps, 4) if at_within is not None else None
        ),
        "max_settlements_per_s": best,
        "ratio_at_max": round(best / tps, 4),
    }


def _cpu_budget(bench: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The cheapest step's CPU per operation beside pgbench's per transaction, and the ratio
    at which that cost would fill every core."""
    step = budget.cheapest(steps)
    if step is None or bench.get("cpu_ms_per_transaction") is None:
        return None
    per_op = step["cpu_ms_per_operation"]
    return {
        "pgbench_cpu_ms_per_transaction": bench["cpu_ms_per_transaction"],
        "cheapest_step_offered_rate": step["offered_rate"],
        "cpu_ms_per_operation": per_op,
        **budget.ceiling(per_op, step["cpu"]["machine"]["cores"], bench["tps"]),
    }


def _highest_within(
    steps: list[dict[str, Any]], p99_limit_ms: float | None
) -> dict[str, Any] | None:
    """The highest step that met the limit, even above a step that did not: on a shared
    machine single steps fail on a stall, and with ``--keep-going`` this shows where the
    service still holds the limit. The knee (every step up to it met the limit) stays the
    strict figure."""
    if p99_limit_ms is None:
        return None
    held = [s for s in steps if not _failed(s, p99_limit_ms) and not _saturated(s)]
    if not held:
        return None
    top = max(held, key=lambda s: s["offered_rate"])
    return {
        "rate": top["offered_rate"],
        "achieved_rate": top["achieved_rate"],
        "settlements_per_s": top["settlements_per_s"],
        "p99_ms": top["latency_ms"].get("p99"),
    }


def _saturated(summary: dict[str, Any]) -> bool:
    """The service no longer keeps up: going further only grows the queue."""
    return bool(summary["error_count"]) or summary["achieved_rate"] < 0.9 * summary["offered_rate"]


def _saturation(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest throughput reached, and the highest rate served in full without errors
    (whatever the latency): on a shared machine a steadier figure than the knee."""
    if not steps:
        return None
    kept = [
        s for s in steps if not s["error_count"] and s["achieved_rate"] >= 0.95 * s["offered_rate"]
    ]
    return {
        "max_achieved_rate": max(s["achieved_rate"] for s in steps),
        "max_settlements_per_s": max(s["settlements_per_s"] for s in steps),
        "highest_rate_served": max((s["offered_rate"] for s in kept), default=None),
    }


def _knee(
    best: dict[str, Any] | None, stopped: str, within: dict[str, Any] | None = None
) -> dict[str, Any]:
    if best is None:
        return {"rate": None, "stopped_because": stopped, "highest_within_limit": within}
    return {
        "rate": best["offered_rate"],
        "achieved_rate": best["achieved_rate"],
        "settlements_per_s": best["settlements_per_s"],
        "p99_ms": best["latency_ms"].get("p99"),
        "stopped_because": stopped,
        "highest_within_limit": within,
    }


def _print_step(s: dict[str, Any]) -> None:
    lat = s["latency_ms"]
    cpu = s["cpu"]
    print(
        f"offered {s['offered_rate']:>7.1f}/s  achieved {s['achieved_rate']:>7.1f}/s"
        f"  p50 {lat.get('p50', '-')} p99 {lat.get('p99', '-')} max {lat.get('max', '-')} ms"
        f"  errors {s['error_count']}"
        f"  cpu svc {cpu['cardsvc']['utilisation']} pg {cpu['postgres']['utilisation']}"
        f" gen {cpu['generators']['utilisation']} others {cpu['machine']['other_processes']}"
        f" steal {cpu['machine'].get('stolen', 0)}",
        flush=True,
    )
    per_op = s.get("cpu_ms_per_operation")
    if per_op:
        print(
            "          cpu ms per operation: " + "  ".join(f"{g} {ms}" for g, ms in per_op.items()),
            flush=True,
        )


def _print_budget(b: dict[str, Any]) -> None:
    print(
        f"cpu budget: pgbench {b['pgbench_cpu_ms_per_transaction']} ms per transaction,"
        f" settlement {b['cpu_ms_per_operation']['total']} ms per operation at"
        f" {b['cheapest_step_offered_rate']}/s: ratio at full cpu {b['ratio_at_full_cpu']}"
        f" ({b['ratio_at_full_cpu_without_generator']} without the generator's share)",
        flush=True,
    )


def write_report(run_dir: Path, out: dict[str, Any]) -> Path:
    return report.write(run_dir, out)


def report_line(summary: dict[str, Any]) -> str:
    return msgspec.json.encode(summary).decode()
