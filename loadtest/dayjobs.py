"""``time-day``: how long a day's reconciliation and clearing take at scale.

For a day seeded by ``seed-settlements``: the busiest facility's 3201 totals
(``POST /v1/reconciliation``, three times: cold, then warm) with the figures the seed
recorded, so the answer must be ``stmt_rslt`` 0; the 3202-like detail for that day of the
busiest facility that fits one request (``POST /v1/reconciliation/detail``, up to 20,000
ids); then the clearing run for the day, through ``POST /v1/clearing/runs`` as a fund
administrator would: it answers 202 while the run goes on in the background, and
``GET /v1/clearing/runs/{date}`` is polled until the run is stored. If the service fails
the run, ``python -m cardsvc clearing`` runs it instead. A day can be cleared once: a second
``time-day`` for it times reading the stored run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from cardsvc.reconciliation.models import DETAIL_MAX_IDS
from cardsvc.terminal_sdk.client import TerminalClient
from loadtest.admin import Admin, error_code
from loadtest.environment import Environment
from loadtest.state import City, StateDir


async def time_day(
    env: Environment, state: StateDir, run_dir: Path, day: dt.date | None
) -> dict[str, Any]:
    c = state.load_city()
    days = c.days if c is not None else []
    if not days:
        raise SystemExit("no seeded day: run `python -m loadtest seed-settlements` first")
    seeded = next((d for d in days if d.date == day), None) if day else days[-1]
    if seeded is None:
        raise SystemExit(f"{day} was not seeded here")
    assert c is not None
    busiest = max(seeded.totals, key=lambda k: seeded.totals[k][0])
    code, insutype = busiest.split(":")
    count, medfee, fund, acct = seeded.totals[busiest]
    terminal = next(t for t in c.terminals if t.kind == "pos" and t.fixmedins_code == code)
    out: dict[str, Any] = {
        "date": seeded.date.isoformat(),
        "settlements_that_day": seeded.count,
        "facility": code,
        "insutype": insutype,
        "facility_settlements": count,
    }
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        client = TerminalClient(
            http, env.base_url, terminal.terminal_id, bytes.fromhex(terminal.key)
        )
        await client.sign_in()
        body = {
            "insutype": insutype,
            "stmt_begndate": seeded.date.isoformat(),
            "stmt_enddate": seeded.date.isoformat(),
            "fixmedins_setl_cnt": count,
            "medfee_sumamt": medfee,
            "fund_pay_sumamt": fund,
            "acct_pay": acct,
        }
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            resp = await client.request("POST", "/v1/reconciliation", body)
            runs.append(
                {
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                    "status": resp.status,
                    "stmt_rslt": resp.body.get("stmt_rslt") if resp.status == 200 else None,
                }
            )
        out["reconciliation"] = runs
        out["reconciliation_detail"] = await _detail(env, http, c, seeded.date)
        out["clearing"] = await _clearing(env, http, run_dir, seeded.date)
    out["ok"] = (
        all(r["stmt_rslt"] == "0" for r in runs)
        and out["reconciliation_detail"].get("stmt_rslt") == "0"
        and bool(out["clearing"].get("ok"))
    )
    return out


async def _detail(
    env: Environment, http: aiohttp.ClientSession, c: City, day: dt.date
) -> dict[str, Any]:
    """The busiest facility whose day fits one detail request lists all its settlements."""
    limit = DETAIL_MAX_IDS  # the route's body limit is sized for that many ids
    conn = await asyncpg.connect(env.database_url)
    try:
        code = await conn.fetchval(
            "SELECT fixmedins_code FROM settlements WHERE setl_date = $1 AND status = 'settled'"
            " GROUP BY 1 HAVING count(*) <= $2 ORDER BY count(*) DESC LIMIT 1",
            day,
            limit,
        )
        ids = [
            r["setl_id"]
            for r in await conn.fetch(
                "SELECT setl_id FROM settlements WHERE fixmedins_code = $1 AND setl_date = $2"
                " AND status = 'settled'",
                code,
                day,
            )
        ]
    finally:
        await conn.close()
    terminal = next(t for t in c.terminals if t.kind == "pos" and t.fixmedins_code == code)
    client = TerminalClient(http, env.base_url, terminal.terminal_id, bytes.fromhex(terminal.key))
    await client.sign_in()
    started = time.perf_counter()
    resp = await client.request(
        "POST", "/v1/reconciliation/detail", {"stmt_date": day.isoformat(), "setl_ids": ids}
    )
    return {
        "ms": round((time.perf_counter() - started) * 1000, 1),
        "status": resp.status,
        "facility": code,
        "ids": len(ids),
        "stmt_rslt": resp.body.get("stmt_rslt") if resp.status == 200 else None,
    }


CLEARING_POLL_LIMIT = 3600.0  # seconds: the bound of the whole poll


async def _clearing(
    env: Environment, http: aiohttp.ClientSession, run_dir: Path, day: dt.date
) -> dict[str, Any]:
    conn = await asyncpg.connect(env.database_url)
    try:
        already = bool(
            await conn.fetchval("SELECT 1 FROM clearing_runs WHERE clearing_date = $1", day)
        )
    finally:
        await conn.close()
    admin = Admin(http, env.base_url, env.operator_token)
    started = time.perf_counter()
    status, body = await admin.request(
        "POST", "/v1/clearing/runs", {"clearing_date": day.isoformat()}
    )
    first_status = status
    polls = 0
    while status == 202 and time.perf_counter() - started < CLEARING_POLL_LIMIT:
        await asyncio.sleep(1.0)
        polls += 1
        status, body = await admin.request("GET", f"/v1/clearing/runs/{day.isoformat()}")
    api: dict[str, Any] = {
        "seconds": round(time.perf_counter() - started, 2),
        "first_status": first_status,
        "status": status,
        "polls": polls,
        "already_cleared_before": already,
    }
    if status == 200:
        api["settlements_cleared"] = body["settlements_cleared"]
        api["reversals_netted"] = body["reversals_netted"]
        api["facilities"] = len(body["facilities"])
        return {"ok": True, "api": api}
    api["error"] = error_code(body)
    started = time.perf_counter()
    code, stdout, stderr = await env.cardsvc_cli(
        "clearing",
        "--date",
        day.isoformat(),
        "--out",
        str(run_dir / "clearing"),
    )
    return {
        "ok": code == 0,
        "api": api,
        "cli": {
            "seconds": round(time.perf_counter() - started, 2),
            "exit": code,
            "output": (stdout.strip() or stderr.strip())[-400:],
        },
    }
