"""The daily clearing run: what the funds and personal accounts owe each facility.

A run for day D pays every settlement of D or earlier that is not reversed, not held for
review and not cleared yet, and takes back every reversal (of D or earlier) of a settlement
that an earlier run had already paid. It marks what it cleared, posts the payout to the
ledger, and keeps its figures: running D again changes
nothing and returns the same run. Runs are serialised by an advisory lock, so two runs
never clear the same settlement.

One facility's impossible figures stop nobody else (``ClearingRun.held``): a settlement
above the policy's amount limits (stored before they existed) is not paid and is named,
run after run, until it is reversed; a facility whose sums would not fit the bigint
figures and ledger amounts they are stored in has nothing cleared by the run. Sums are
numeric in SQL and exact integers here.

A day of a million settlements takes minutes, longer than any request may: ``start`` runs
the day in a background task of the worker, in one transaction with its own statement
bound (``CARDSVC_CLEARING_TIMEOUT``), and answers with the run if it is done within
``CARDSVC_CLEARING_WAIT`` seconds, or says that it is running. While it runs it holds a
per-day advisory lock, which is how any worker tells "running" from "never started"; a
worker that dies mid-run rolls it back, and starting the day again runs it afresh.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import structlog

from cardsvc import clock
from cardsvc.audit.services import AuditLog
from cardsvc.clearing.files import (
    FacilityFile,
    FileMismatch,
    combine,
    out_of_range_hold,
    over_limits_hold,
    unfit_facilities,
)
from cardsvc.clearing.models import ClearingRun, ClearingRunning, FacilityClearing
from cardsvc.db import Connection, Pool, extend_bounds, transaction
from cardsvc.errors import BusinessRuleViolation, NotFound
from cardsvc.ledger import services as ledger
from cardsvc.ledger.postings import CLEARING_BANK, Posting, facility_account
from cardsvc.settlement.fundparts import (
    first_setl_ids,
    fund_parts,
    settlement_limit,
    within_limits,
)
from cardsvc.web.caller import Caller

log = structlog.get_logger(__name__)

CLEARING_LOCK = 0x636C6561  # any fixed number: one run at a time
_DAY_LOCK_CLASS = 0x636C6562  # with the day's ordinal: "this day is being cleared"
_facilities = msgspec.json.Decoder(list[FacilityClearing])
_json = msgspec.json.Encoder()

# What a run for $1 may pay: settled, not held for review, not cleared yet, of $1 or earlier.
_DUE = """clearing_date IS NULL AND status = 'settled' AND setl_date <= $1
      AND review_status IN ('none', 'approved')"""

# $2: the settlement limit. Sums are numeric: the run checks their range (``unfit``).
_CLEAR_SETTLEMENTS = f"""
WITH cleared AS (
    UPDATE settlements SET clearing_date = $1
    WHERE {_DUE} AND {within_limits("settlements", "$2")}
    RETURNING fixmedins_code, setldetail, acct_pay
), parts AS ({fund_parts("cleared", "fixmedins_code")})
SELECT fixmedins_code, fund, sum(amount) AS amount, count(*)::int AS n
FROM parts GROUP BY fixmedins_code, fund
"""  # noqa: S608 - constant identifiers

# Due, but above the amount limits (stored before they existed): held, and named in the run.
_OVER_LIMITS = f"""
SELECT fixmedins_code, count(*)::int AS n,
       {first_setl_ids()} AS setl_ids
FROM settlements WHERE {_DUE} AND NOT {within_limits("settlements", "$2")}
GROUP BY fixmedins_code ORDER BY fixmedins_code
"""  # noqa: S608 - constant identifiers

_NET_REVERSALS = f"""
WITH netted AS (
    UPDATE reversals r SET clearing_date = $1
    FROM settlements s
    WHERE r.clearing_date IS NULL AND r.revs_date <= $1 AND s.setl_id = r.setl_id
      AND s.clearing_date IS NOT NULL
    RETURNING r.fixmedins_code, s.setldetail, s.acct_pay
), parts AS ({fund_parts("netted", "fixmedins_code")})
SELECT fixmedins_code, fund, sum(amount) AS amount, count(*)::int AS n
FROM parts GROUP BY fixmedins_code, fund
"""  # noqa: S608 - constant identifiers


# A facility's file, read on download: what the run cleared for it, one row per fund a
# settlement (or the settlement of a netted reversal) drew on, or one without a fund for an
# all-cash one. Ordered by time, then id, then fund: a settlement's lines are adjacent.
_FILE_ROWS = {
    kind: f"""
WITH x AS ({source}), parts AS ({fund_parts("x", "setl_id")})
SELECT x.setl_id, x.at, p.fund, p.amount
FROM x LEFT JOIN parts p USING (setl_id)
ORDER BY x.at, x.setl_id, p.fund
"""  # noqa: S608 - constant identifiers
    for kind, source in (
        (
            "settlement",
            "SELECT setl_id, setl_time AS at, setldetail, acct_pay FROM settlements"
            " WHERE clearing_date = $1 AND fixmedins_code = $2",
        ),
        (
            "reversal",
            "SELECT r.setl_id, r.revs_time AS at, s.setldetail, s.acct_pay FROM reversals r"
            " JOIN settlements s USING (setl_id)"
            " WHERE r.clearing_date = $1 AND r.fixmedins_code = $2",
        ),
    )
}
_FILE_CHUNK = 2000  # rows fetched, and lines sent, at a time


class Clearing:
    def __init__(
        self, pool: Pool, audit: AuditLog, *, timeout: float = 1800.0, wait: float = 3.0
    ) -> None:
        self._pool, self._audit = pool, audit
        self._timeout, self._wait = timeout, wait
        self._tasks: dict[dt.date, asyncio.Task[ClearingRun]] = {}

    async def start(self, caller: Caller, day: dt.date) -> ClearingRun | ClearingRunning:
        """The day's run: the stored one, or a new one if it finishes within the wait;
        otherwise ``ClearingRunning`` and the run goes on in the background."""
        _check_day(day)
        stored = await self._stored_or_running(day)
        if stored is not None:
            return stored
        task = self._tasks.get(day)
        if task is None:
            task = asyncio.create_task(self.run(caller, day), name=f"clearing {day}")
            self._tasks[day] = task
            task.add_done_callback(lambda t: self._finished(day, t))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self._wait)
        except TimeoutError:
            return ClearingRunning(clearing_date=day)

    def _finished(self, day: dt.date, task: asyncio.Task[ClearingRun]) -> None:
        self._tasks.pop(day, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("clearing_failed", clearing_date=str(day), error=repr(task.exception()))

    async def close(self) -> None:
        """Stop runs in progress (each rolls back; starting its day again redoes it)."""
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def run(self, caller: Caller, day: dt.date) -> ClearingRun:
        """Run the day to the end here (the CLI, and ``start``'s background task)."""
        _check_day(day)
        async with transaction(self._pool) as conn:
            await extend_bounds(conn, self._timeout, lock_waits=True)
            # The day's lock first, so the day shows as running while it waits behind a
            # run of another day for the lock that serialises runs.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, $2)", _DAY_LOCK_CLASS, day.toordinal()
            )
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1)", CLEARING_LOCK, timeout=self._timeout
            )
            existing = await self._load(conn, day)
            if existing is not None:
                return existing
            return await self._clear(caller, conn, day)

    async def status(self, day: dt.date) -> ClearingRun | ClearingRunning:
        found = await self._stored_or_running(day)
        if found is None:
            raise NotFound("no clearing run for that date", code="CLEARING_RUN_NOT_FOUND")
        return found

    async def _stored_or_running(self, day: dt.date) -> ClearingRun | ClearingRunning | None:
        async with self._pool.acquire() as conn:
            run = await self._load(conn, day)
            if run is not None:
                return run
            running = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
                " AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2)",
                _DAY_LOCK_CLASS,
                day.toordinal(),
            )
        return ClearingRunning(clearing_date=day) if running else None

    async def file(self, day: dt.date, fixmedins_code: str) -> AsyncIterator[bytes]:
        """The facility's file of the day's run, in chunks. Runs made before files were
        rendered on download kept theirs as stored: served as they were."""
        async with self._pool.acquire() as conn:
            stored = await conn.fetchval(
                "SELECT content FROM clearing_files"
                " WHERE clearing_date = $1 AND fixmedins_code = $2",
                day,
                fixmedins_code,
            )
            run = None if stored is not None else await self._load(conn, day)
        if stored is not None:
            return _once(str(stored).encode())
        facility = (
            next((f for f in run.facilities if f.fixmedins_code == fixmedins_code), None)
            if run is not None
            else None
        )
        if facility is None:
            raise NotFound(
                "no clearing file for that date and facility", code="CLEARING_FILE_NOT_FOUND"
            )
        return self._render(day, facility)

    async def _render(self, day: dt.date, facility: FacilityClearing) -> AsyncIterator[bytes]:
        """The file from the rows the run marked (they never change after it: a later
        reversal is netted by a later run), read by cursor; the totals are checked against
        the run's stored figures, and a file that does not add up is cut off before them."""
        file = FacilityFile(day, facility)
        yield file.header().encode()
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            for kind in ("settlement", "reversal"):
                line = file.settlement if kind == "settlement" else file.reversal
                cursor = await conn.cursor(_FILE_ROWS[kind], day, facility.fixmedins_code)
                while rows := await cursor.fetch(_FILE_CHUNK):
                    yield "".join(
                        line(r["setl_id"], r["at"], r["fund"], int(r["amount"] or 0)) for r in rows
                    ).encode()
        try:
            yield file.totals().encode()
        except FileMismatch:
            log.error(
                "clearing_file_mismatch",
                clearing_date=str(day),
                fixmedins_code=facility.fixmedins_code,
            )
            raise

    async def _clear(self, caller: Caller, conn: Connection, day: dt.date) -> ClearingRun:
        # The big statements wait as long as the transaction's statement bound allows.
        limit = settlement_limit()
        settled = _figures(await conn.fetch(_CLEAR_SETTLEMENTS, day, limit, timeout=self._timeout))
        netted = _figures(await conn.fetch(_NET_REVERSALS, day, timeout=self._timeout))
        held = [
            over_limits_hold(r["fixmedins_code"], r["n"], list(r["setl_ids"]), limit)
            for r in await conn.fetch(_OVER_LIMITS, day, limit, timeout=self._timeout)
        ]
        unfit = sorted(unfit_facilities(settled, netted))
        if unfit:  # figures too large to store or post: the facility waits, the rest clear
            await self._unclear(conn, day, unfit)
            settled = [r for r in settled if r[0] not in unfit]
            netted = [r for r in netted if r[0] not in unfit]
            held += [out_of_range_hold(code) for code in unfit]
        for hold in held:
            log.warning("clearing_held", fixmedins_code=hold.fixmedins_code, code=hold.code)
        counts = await self._counts(conn, day)
        facilities = combine(settled, netted, counts)
        run = ClearingRun(
            clearing_date=day,
            created_at=clock.now(),
            settlements_cleared=sum(n for n, _ in counts.values()),
            reversals_netted=sum(n for _, n in counts.values()),
            net_total=sum(f.net_amt for f in facilities),
            facilities=facilities,
            held=sorted(held, key=lambda h: (h.fixmedins_code, h.code)),
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
        await self._audit.record(
            conn,
            caller,
            action="clearing.run",
            object_type="clearing",
            object_id=day.isoformat(),
            data={
                "facilities": len(facilities),
                "net_total": run.net_total,
                "settlements": run.settlements_cleared,
                "reversals": run.reversals_netted,
                "held": len(run.held),
            },
        )
        return run

    async def _unclear(self, conn: Connection, day: dt.date, codes: list[str]) -> None:
        """Take these facilities' settlements and reversals back out of the day's run."""
        for table in ("settlements", "reversals"):
            await conn.execute(
                f"UPDATE {table} SET clearing_date = NULL"  # noqa: S608 - constant names
                " WHERE clearing_date = $1 AND fixmedins_code = ANY($2::text[])",
                day,
                codes,
                timeout=self._timeout,
            )

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
            timeout=self._timeout,
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


async def _once(content: bytes) -> AsyncIterator[bytes]:
    yield content


def _figures(rows: list[asyncpg.Record]) -> list[tuple[str, str, int, int]]:
    """(facility, fund, amount, count) rows with the numeric sums as exact integers."""
    return [(r["fixmedins_code"], r["fund"], int(r["amount"]), r["n"]) for r in rows]


def _check_day(day: dt.date) -> None:
    """A day is cleared once it is over in business time: a run of today would store an
    empty or partial run for good (settlements after it wait for the next day's run)."""
    today = clock.business_date()
    if day >= today:
        raise BusinessRuleViolation(
            f"{day} is not over yet (today is {today} in Asia/Shanghai): a day can be"
            " cleared from the next day on",
            code="CLEARING_DATE_NOT_CLOSED",
            details={"clearing_date": day.isoformat(), "business_date": today.isoformat()},
        )
