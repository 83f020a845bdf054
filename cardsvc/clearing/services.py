"""The daily clearing run: what the funds and personal accounts owe each facility.

A run for day D pays every settlement of D or earlier that is not reversed, not held for
review and not cleared yet, and takes back every reversal (of D or earlier) of a settlement
that an earlier run had already paid. It marks what it cleared, posts the payout to the
ledger, stores one CSV file per facility, and keeps its figures: running D again changes
nothing and returns the same run. Runs are serialised by an advisory lock, so two runs
never clear the same settlement.
"""

from __future__ import annotations

import datetime as dt

import msgspec

from cardsvc import clock
from cardsvc.audit.services import AuditLog
from cardsvc.clearing.files import combine, facility_csv
from cardsvc.clearing.models import ClearingRun, FacilityClearing
from cardsvc.db import Connection, Pool, transaction
from cardsvc.errors import BusinessRuleViolation, NotFound
from cardsvc.ledger import services as ledger
from cardsvc.ledger.postings import CLEARING_BANK, Posting, facility_account
from cardsvc.settlement.fundparts import fund_parts
from cardsvc.web.caller import ADMIN

_CLEARING_LOCK = 0x636C6561  # any fixed number
_facilities = msgspec.json.Decoder(list[FacilityClearing])
_json = msgspec.json.Encoder()

_CLEAR_SETTLEMENTS = f"""
WITH cleared AS (
    UPDATE settlements SET clearing_date = $1
    WHERE clearing_date IS NULL AND status = 'settled' AND setl_date <= $1
      AND review_status IN ('none', 'approved')
    RETURNING fixmedins_code, setldetail, acct_pay
), parts AS ({fund_parts("cleared", "fixmedins_code")})
SELECT fixmedins_code, fund, sum(amount)::bigint AS amount, count(*)::int AS n
FROM parts GROUP BY fixmedins_code, fund
"""  # noqa: S608 - constant identifiers

_NET_REVERSALS = f"""
WITH netted AS (
    UPDATE reversals r SET clearing_date = $1
    FROM settlements s
    WHERE r.clearing_date IS NULL AND r.revs_date <= $1 AND s.setl_id = r.setl_id
      AND s.clearing_date IS NOT NULL
    RETURNING r.fixmedins_code, s.setldetail, s.acct_pay
), parts AS ({fund_parts("netted", "fixmedins_code")})
SELECT fixmedins_code, fund, sum(amount)::bigint AS amount, count(*)::int AS n
FROM parts GROUP BY fixmedins_code, fund
"""  # noqa: S608 - constant identifiers


class Clearing:
    def __init__(self, pool: Pool, audit: AuditLog) -> None:
        self._pool, self._audit = pool, audit

    async def run(self, day: dt.date) -> ClearingRun:
        if day > clock.business_date():
            raise BusinessRuleViolation(
                "cannot clear a day that has not begun", code="CLEARING_DATE_IN_FUTURE"
            )
        async with transaction(self._pool) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _CLEARING_LOCK)
            existing = await self._load(conn, day)
            if existing is not None:
                return existing
            return await self._clear(conn, day)

    async def get(self, day: dt.date) -> ClearingRun:
        async with self._pool.acquire() as conn:
            run = await self._load(conn, day)
        if run is None:
            raise NotFound("no clearing run for that date", code="CLEARING_RUN_NOT_FOUND")
        return run

    async def file(self, day: dt.date, fixmedins_code: str) -> str:
        content = await self._pool.fetchval(
            "SELECT content FROM clearing_files WHERE clearing_date = $1 AND fixmedins_code = $2",
            day,
            fixmedins_code,
        )
        if content is None:
            raise NotFound(
                "no clearing file for that date and facility", code="CLEARING_FILE_NOT_FOUND"
            )
        return str(content)

    async def _clear(self, conn: Connection, day: dt.date) -> ClearingRun:
        settled = await conn.fetch(_CLEAR_SETTLEMENTS, day)
        netted = await conn.fetch(_NET_REVERSALS, day)
        counts = await self._counts(conn, day)
        facilities = combine([tuple(r) for r in settled], [tuple(r) for r in netted], counts)
        run = ClearingRun(
            clearing_date=day,
            created_at=clock.now(),
            settlements_cleared=sum(n for n, _ in counts.values()),
            reversals_netted=sum(n for _, n in counts.values()),
            net_total=sum(f.net_amt for f in facilities),
            facilities=facilities,
        )
        await self._post(conn, day, facilities)
        await conn.execute(
            "INSERT INTO clearing_runs (clearing_date, created_at, summary) VALUES ($1, $2, $3)",
            day,
            run.created_at,
            _json.encode(run).decode(),
        )
        await conn.executemany(
            "INSERT INTO clearing_items (clearing_date, fixmedins_code, fund, settled_amt,"
            " reversed_amt, net_amt, settlements, reversals) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
            [
                (
                    day,
                    i.fixmedins_code,
                    i.fund,
                    i.settled_amt,
                    i.reversed_amt,
                    i.net_amt,
                    i.settlements,
                    i.reversals,
                )
                for f in facilities
                for i in f.items
            ],
        )
        await conn.executemany(
            "INSERT INTO clearing_files (clearing_date, fixmedins_code, content)"
            " VALUES ($1, $2, $3)",
            [(day, f.fixmedins_code, facility_csv(day, f)) for f in facilities],
        )
        await self._audit.append(
            conn,
            actor=ADMIN.actor,
            action="clearing.run",
            object_type="clearing",
            object_id=day.isoformat(),
            data={
                "facilities": len(facilities),
                "net_total": run.net_total,
                "settlements": run.settlements_cleared,
                "reversals": run.reversals_netted,
            },
        )
        return run

    async def _counts(self, conn: Connection, day: dt.date) -> dict[str, tuple[int, int]]:
        """Per facility: settlements cleared and reversals netted by this run."""
        rows = await conn.fetch(
            """
            SELECT fixmedins_code, sum(s)::int AS settlements, sum(r)::int AS reversals FROM (
                SELECT fixmedins_code, 1 AS s, 0 AS r FROM settlements WHERE clearing_date = $1
                UNION ALL
                SELECT fixmedins_code, 0, 1 FROM reversals WHERE clearing_date = $1
            ) t GROUP BY fixmedins_code
            """,
            day,
        )
        return {r["fixmedins_code"]: (r["settlements"], r["reversals"]) for r in rows}

    async def _post(
        self, conn: Connection, day: dt.date, facilities: list[FacilityClearing]
    ) -> None:
        """Pay each facility its net: what it was owed leaves for the bank (or, where its
        reversals outweigh its settlements, comes back)."""
        postings: list[Posting] = []
        for f in facilities:
            if f.net_amt > 0:
                postings += [
                    Posting(facility_account(f.fixmedins_code), "D", f.net_amt),
                    Posting(CLEARING_BANK, "C", f.net_amt),
                ]
            elif f.net_amt < 0:
                postings += [
                    Posting(CLEARING_BANK, "D", -f.net_amt),
                    Posting(facility_account(f.fixmedins_code), "C", -f.net_amt),
                ]
        if postings:
            await ledger.post(conn, "clearing", day.isoformat(), postings)

    async def _load(self, conn: Connection, day: dt.date) -> ClearingRun | None:
        row = await conn.fetchrow("SELECT summary FROM clearing_runs WHERE clearing_date = $1", day)
        return None if row is None else msgspec.json.decode(row["summary"], type=ClearingRun)
