"""``seed``: the synthetic city. Registry objects through the admin API, persons by COPY.

First run: facilities, the catalog and terminals through the API (terminal keys come back
once and are kept in ``city.json``, mode 0600). Then persons ``city.persons .. N-1`` by COPY
(a city only grows; ``--reset`` starts a new one), then the working set's card keys.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import asyncpg

from cardsvc.devenv.pgcluster import LocalCluster
from loadtest import bulkload, city, workset
from loadtest.admin import Admin
from loadtest.environment import ADMDVS, Environment, free_port
from loadtest.state import City, Facility, StateDir, Terminal


async def register(admin: Admin, layout: city.Layout, catalog_extra: int) -> City:
    """Facilities, catalog and terminals, through the admin API."""
    new = City(admdvs=ADMDVS)
    for body in city.facilities(layout):
        created = await admin.call("POST", "/v1/facilities", body)
        new.facilities.append(
            Facility(
                fixmedins_code=created["fixmedins_code"],
                type=created["type"],
                level=created["level"],
                agreements=created["agreements"],
                credit_rating=created["credit_rating"],
            )
        )
    items = city.POLICY_CATALOG + [city.extra_item(n) for n in range(1, catalog_extra + 1)]
    await admin.call("PUT", "/v1/catalog/items", {"items": items})
    new.catalog_items = catalog_extra
    wanted: list[dict[str, Any]] = [{"kind": "counter"}, {"kind": "kiosk"}]
    for f in new.facilities:
        wanted.append({"kind": "pos", "fixmedins_code": f.fixmedins_code})
        if f.type == "hospital":
            wanted.append({"kind": "his", "fixmedins_code": f.fixmedins_code})
    for body in wanted:
        reg = await admin.call("POST", "/v1/terminals", body)
        new.terminals.append(
            Terminal(
                terminal_id=reg["terminal_id"],
                kind=reg["kind"],
                key=reg["terminal_key"],
                fixmedins_code=reg["fixmedins_code"],
            )
        )
    return new


def counter_of(c: City) -> Terminal:
    return next(t for t in c.terminals if t.kind == "counter")


async def seed(
    env: Environment,
    state: StateDir,
    *,
    persons: int,
    layout: str,
    catalog_extra: int,
    workset_size: int,
    batch: int,
) -> dict[str, Any]:
    timings: dict[str, float] = {}
    c = state.load_city()
    if c is None:
        started = time.perf_counter()
        async with aiohttp.ClientSession() as http:
            admin = Admin(http, env.base_url, env.operator_token)
            c = await register(admin, city.LAYOUTS[layout], catalog_extra)
        conn = await asyncpg.connect(env.database_url)
        try:
            await bulkload.init_bases(conn, c)
        finally:
            await conn.close()
        state.save_city(c)
        timings["registry_s"] = time.perf_counter() - started
    before = c.persons
    started = time.perf_counter()
    added = await bulkload.load_persons(
        env.database_url,
        c,
        persons,
        counter_id=counter_of(c).terminal_id,
        data_key=env.data_key,
        batch=batch,
        on_batch=lambda: state.save_city(c),
    )
    if added:
        took = time.perf_counter() - started
        timings["persons_s"] = took
        timings["persons_per_s"] = added / took
        c.seed_seconds[f"persons {before}..{c.persons}"] = round(took, 1)
    started = time.perf_counter()
    cards = await workset.build(
        env.database_url,
        c,
        counter_of(c),
        (env.hsm_host, env.hsm_port, env.hsm_tls()),
        workset_size,
        state.load_workset(),
    )
    state.save_workset(cards)
    timings["workset_s"] = time.perf_counter() - started
    state.save_city(c)
    return {
        "persons": c.persons,
        "added": added,
        "facilities": len(c.facilities),
        "terminals": len(c.terminals),
        "catalog_items": len(city.POLICY_CATALOG) + c.catalog_items,
        "workset": len(cards),
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }


def reset(state: StateDir, database_url: str | None) -> None:
    """Drop the private cluster's database and forget the city (keys included)."""
    if database_url:
        raise SystemExit("--reset only drops the private cluster's database; drop yours yourself")
    cluster = LocalCluster(state.pgdata, free_port())
    if not cluster.ensure():
        cluster.start()
        try:
            asyncio.run(_drop(cluster.url("postgres")))
        finally:
            cluster.stop()
    state.forget_city()


async def _drop(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DROP DATABASE IF EXISTS cardsvc WITH (FORCE)")
    finally:
        await conn.close()
