"""Admitting a signed request: record its nonce, read its terminal's and facility's standing.

This is the part of request authentication that needs the database. It is written as two
CTEs so that a handler on the hot path can put them in its own statements and spend no
round trip of its own on them (see ``terminal(..., admit_in_handler=True)``); every other
request runs them together through ``admit``. Settlement reads the standing with its
snapshot and records the nonce in its write: a read that records nothing commits without
waiting for a WAL flush, which a statement that inserts a row and happens to prune a page
would have to. Either way a nonce is recorded once, and a
suspension or disabling takes effect on the next request.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from cardsvc.db import Connection, Pool
from cardsvc.errors import Forbidden, Unauthenticated
from cardsvc.web.caller import Admission

# True when ``admission_nonce`` recorded the nonce (it was new).
NONCE_FRESH = "(SELECT count(*) FROM admission_nonce) > 0"


def nonce_cte(terminal: str, nonce: str) -> str:
    """SQL of the CTE ``admission_nonce``: one row if the nonce is new (and now recorded),
    none if it was seen before. ``terminal`` and ``nonce`` are placeholders."""
    return f"""
    admission_nonce AS (
        INSERT INTO request_nonces (terminal_id, nonce) VALUES ({terminal}, {nonce})
        ON CONFLICT DO NOTHING RETURNING 1
    )"""  # noqa: S608 - placeholders only


def standing_cte(terminal: str, fresh: str = "true") -> str:
    """SQL of the CTE ``admission``: one row (none for an unknown terminal) with ``fresh``
    (the SQL expression given), ``terminal_status``, ``facility_status``,
    ``credit_rating`` and ``has_facility``. It writes nothing."""
    return f"""
    admission AS (
        SELECT {fresh} AS fresh,
               t.status AS terminal_status, f.status AS facility_status, f.credit_rating,
               t.fixmedins_code IS NOT NULL AS has_facility
        FROM terminals t LEFT JOIN facilities f USING (fixmedins_code)
        WHERE t.terminal_id = {terminal}
    )"""  # noqa: S608 - placeholders only


def admission_ctes(first: int) -> str:
    """Both, with their two parameters, terminal id and nonce, numbered from ``first``."""
    terminal, nonce = f"${first}", f"${first + 1}"
    return nonce_cte(terminal, nonce) + "," + standing_cte(terminal, NONCE_FRESH)


_ADMIT = f"WITH {admission_ctes(1)} SELECT * FROM admission"  # noqa: S608


def check_admission(row: asyncpg.Record | dict[str, Any] | None) -> None:
    """Refuse the request as its admission row says; ``row`` holds the columns of
    ``admission`` (None: the terminal is gone)."""
    if row is None or not row["fresh"]:
        raise nonce_replayed()
    if row["terminal_status"] != "active":
        raise Forbidden("terminal is disabled", code="TERMINAL_DISABLED")
    if row["has_facility"] and (row["facility_status"] != "active" or row["credit_rating"] == "D"):
        raise Forbidden("the terminal's facility is suspended", code="FACILITY_SUSPENDED")


def nonce_replayed() -> Unauthenticated:
    return Unauthenticated("nonce already used", code="NONCE_REPLAYED")


async def admit(db: Pool | Connection, admission: Admission) -> None:
    """The admission in a round trip of its own."""
    admission.done = True
    check_admission(await db.fetchrow(_ADMIT, admission.terminal_id, admission.nonce))
