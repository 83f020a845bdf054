"""After a run: what the harness saw acknowledged is in the database exactly once, the
ledger proves, and no personal account is below zero.

The ledger proof is asked of the service (``GET /v1/ledger/proof``); when that request
gives up (at a million persons the proof scans millions of entries, longer than the
service's statement timeout) the same proof runs as ``python -m cardsvc prove-ledger``
with a long timeout, and the report says which one answered.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import asyncpg

from loadtest.admin import Admin, error_code
from loadtest.environment import Environment


async def check(
    env: Environment,
    settlements: list[tuple[str, str, str]],
    reversals: list[str],
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    conn = await asyncpg.connect(env.database_url)
    try:
        result["settlements"] = await _settlements(conn, settlements)
        result["reversals"] = await _reversals(conn, reversals)
        row = await conn.fetchrow(
            "SELECT min(balance) AS low, count(*) FILTER (WHERE balance < 0) AS negative"
            " FROM psn_accounts"
        )
        result["accounts"] = {
            "min_balance": row["low"],
            "negative": row["negative"],
            "ok": row["negative"] == 0 and (row["low"] is None or row["low"] >= 0),
        }
    finally:
        await conn.close()
    result["ledger_proof"] = await _proof(env)
    result["ok"] = all(
        part["ok"] for part in (result[k] for k in ("settlements", "reversals", "accounts"))
    ) and bool(result["ledger_proof"]["ok"])
    return result


async def _settlements(
    conn: asyncpg.Connection, acknowledged: list[tuple[str, str, str]]
) -> dict[str, Any]:
    ids = [s[0] for s in acknowledged]
    rows = await conn.fetch(
        "SELECT setl_id, idempotency_key, fixmedins_code FROM settlements"
        " WHERE setl_id = ANY($1::text[])",
        ids,
    )
    stored = {r["setl_id"]: (r["idempotency_key"], r["fixmedins_code"]) for r in rows}
    missing = [s for s, _, _ in acknowledged if s not in stored]
    wrong_key = [s for s, key, code in acknowledged if s in stored and stored[s] != (key, code)]
    acknowledged_twice = len(ids) - len(set(ids))
    # The same idempotency key settled more than once at a facility (the unique index
    # forbids it; checked anyway, per key the harness sent).
    duplicates = await conn.fetchval(
        """
        SELECT count(*) FROM (
            SELECT s.fixmedins_code, s.idempotency_key FROM settlements s
            JOIN unnest($1::text[], $2::text[]) AS k(code, key)
              ON s.fixmedins_code = k.code AND s.idempotency_key = k.key
            GROUP BY 1, 2 HAVING count(*) > 1) d
        """,
        [s[2] for s in acknowledged],
        [s[1] for s in acknowledged],
    )
    return {
        "acknowledged": len(ids),
        "found": len(stored),
        "missing": missing[:20],
        "missing_count": len(missing),
        "wrong_key": wrong_key[:20],
        "acknowledged_twice": acknowledged_twice,
        "duplicate_keys": duplicates,
        "ok": not missing and not wrong_key and acknowledged_twice == 0 and duplicates == 0,
    }


async def _reversals(conn: asyncpg.Connection, acknowledged: list[str]) -> dict[str, Any]:
    rows = await conn.fetch(
        "SELECT s.setl_id FROM settlements s JOIN reversals r USING (setl_id)"
        " WHERE s.setl_id = ANY($1::text[]) AND s.status = 'reversed'",
        acknowledged,
    )
    found = {r["setl_id"] for r in rows}
    missing = [s for s in acknowledged if s not in found]
    return {
        "acknowledged": len(acknowledged),
        "found": len(found),
        "missing": missing[:20],
        "ok": not missing and len(found) == len(set(acknowledged)),
    }


async def _proof(env: Environment) -> dict[str, Any]:
    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        status, body = await Admin(http, env.base_url, env.operator_token).request(
            "GET", "/v1/ledger/proof"
        )
    took = time.perf_counter() - started
    if status == 200:
        return _proof_summary(body, "GET /v1/ledger/proof", took)
    api_failure = f"{status} {error_code(body)} after {took:.1f} s"
    started = time.perf_counter()
    code, stdout, stderr = await env.cardsvc_cli("prove-ledger", CARDSVC_DB_COMMAND_TIMEOUT="3600")
    took = time.perf_counter() - started
    try:
        parsed = json.loads(stdout[stdout.index("{") :])
    except ValueError:
        return {
            "ok": False,
            "via": "python -m cardsvc prove-ledger",
            "api_failure": api_failure,
            "exit": code,
            "stderr": stderr.strip()[-600:],
        }
    summary = _proof_summary(parsed, "python -m cardsvc prove-ledger", took)
    summary["api_failure"] = api_failure
    return summary


def _proof_summary(body: dict[str, Any], via: str, seconds: float) -> dict[str, Any]:
    return {
        "ok": bool(body.get("ok")),
        "via": via,
        "seconds": round(seconds, 2),
        "transactions": body.get("transactions"),
        "entries": body.get("entries"),
        "unbalanced": body.get("unbalanced", [])[:5],
        "balance_mismatches": body.get("balance_mismatches", [])[:5],
        "unbooked_settlements": body.get("unbooked_settlements", [])[:5],
    }
