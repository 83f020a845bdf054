"""The settlement pipeline: one batcher per worker process settles whatever requests have
gathered while its previous batch was in flight, in one read, one write and one commit.

A request's path (see docs/architecture.md, "The settlement pipeline"):

1. The handler checks the card token and submits a ``SettleJob``; it waits for its answer.
   (The national gateway's 2207/2304 submit theirs the same way: ``cardsvc.national.settle``.)
2. The batcher takes the jobs queued, in order, up to ``max_batch``, at most one per person,
   Idempotency-Key, card token and nonce (the others wait for the next batch).
3. One statement reads every job's snapshot and standing (``snapshot.read_for_settle``).
4. The pure policy plans each settlement (``plan``); a refused one gets its own error.
5. One statement writes every planned settlement with its nonce (and, for a gateway
   settlement, marks the visit lines it settles), and one audit entry for the batch
   (``store.settlement_statement``), all or nothing: its commit is the batch's.
6. Each job gets its answer: its settlement, its refusal, or ``ALONE``.

``ALONE`` sends a job back to its handler to be settled by itself under its person's lock
(``SettlementService``): a retry whose Idempotency-Key is already settled, a card token
already spent, a person whose account changed between read and write, a unique index that
another worker's request won at this instant. Those are rare, and their answers need the
one-at-a-time logic anyway. A batch that fails (the database went away, a timeout) fails
every job of it with that error, the usual 503; nothing of it was committed, or all of it
was, so a retry with the same Idempotency-Key settles exactly once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg
import structlog

from cardsvc import clock
from cardsvc.audit.services import new_entry
from cardsvc.batching import Batcher, Outcome
from cardsvc.db import Connection, Pool
from cardsvc.errors import CardsvcError, ServiceUnavailable
from cardsvc.ops import metrics
from cardsvc.settlement.flags import SupervisionRules
from cardsvc.settlement.models import SetlInfo
from cardsvc.settlement.params import PolicyParams
from cardsvc.settlement.plan import Planned, SettleJob, item_codes, plan
from cardsvc.settlement.snapshot import SettleInput, SettleRead, read_for_settle
from cardsvc.settlement.store import settlement_statement

log = structlog.get_logger(__name__)

# A batch write that fails with one of these wrote nothing and says nothing about most of
# its requests: each is settled alone.
_SETTLE_ALONE_ON = (
    asyncpg.UniqueViolationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.LockNotAvailableError,
    asyncpg.SerializationError,
)

# Who the batch's audit entry names; each settlement in it names its terminal.
PIPELINE_ACTOR: Final = "settlement-pipeline"


class Alone:
    """Settle this job by itself (see the module's docstring)."""

    def __repr__(self) -> str:
        return "ALONE"


ALONE: Final = Alone()


def job_keys(job: SettleJob) -> tuple[Hashable, ...]:
    keys: tuple[Hashable, ...] = (
        ("person", job.psn_no),
        ("key", job.fixmedins_code, job.key),
        ("token", job.spends),
    )
    if job.admission is not None:
        keys += (("nonce", job.admission.terminal_id, job.admission.nonce),)
    return keys


def job_input(job: SettleJob) -> SettleInput:
    return SettleInput(
        psn_no=job.psn_no,
        card_no=job.card_no,
        fixmedins_code=job.fixmedins_code,
        item_codes=item_codes(job.request),
        injury_case_id=job.request.injury_case_id,
        idempotency_key=job.key,
        card_auth_id=job.spends,
        standing_of=job.admission,
        stay=job.stay,
    )


async def read_jobs(
    conn: Connection, jobs: Sequence[SettleJob], rules: SupervisionRules, now: dt.datetime
) -> list[SettleRead | CardsvcError]:
    return await read_for_settle(
        conn,
        [job_input(j) for j in jobs],
        now=now,
        settle_date=clock.business_date(now),
        other_facility_window=dt.timedelta(seconds=rules.other_facility_window_s),
    )


@dataclass(frozen=True, slots=True)
class Written:
    """A batch write's outcome: whether it was written (all or nothing), the persons whose
    accounts still had their snapshot's version, and the settlements (setl_id) whose visit
    lines changed or were held by another transaction."""

    ok: bool
    locked: set[str]
    lines_lost: set[str]


def lines_changed(mdtrt_id: str) -> ServiceUnavailable:
    """A gateway settlement whose visit lines changed since they were read, or were held by
    another message settling or changing them: nothing was written; a retry reads them
    again (and finds them settled, if another message settled them)."""
    return ServiceUnavailable(
        f"visit {mdtrt_id} is being settled or changed by another message: retry in a moment",
        code="VISIT_SETTLING",
    )


async def write_planned(conn: Connection, planned: Sequence[Planned]) -> Written:
    """Write the planned settlements in one statement, all or nothing."""
    audit = new_entry(
        PIPELINE_ACTOR,
        "settlement.settled",
        "settlement_batch",
        planned[0].write.setl_id,
        {"settlements": [p.audited for p in planned]},
    )
    sql, args = settlement_statement([p.write for p in planned], audit)
    row = await conn.fetchrow(sql, *args)
    written = Written(row["ok"], set(row["locked"]), set(row["lines_lost"]))
    if not written.ok:
        return written
    for p in planned:
        if p.job.admission is not None:
            p.job.admission.done = True
        if p.write.flags:
            log.info(
                "supervision_flags", setl_id=p.write.setl_id, rules=[f.rule for f in p.write.flags]
            )
    return written


class SettlementPipeline:
    def __init__(
        self, pool: Pool, params: PolicyParams, rules: SupervisionRules, *, max_batch: int
    ) -> None:
        self._pool, self._params, self._rules = pool, params, rules
        self._batcher: Batcher[SettleJob, SetlInfo | Alone] = Batcher(
            "settlement", self._run, max_size=max_batch, keys=job_keys
        )

    async def submit(self, job: SettleJob) -> SetlInfo | Alone:
        return await self._batcher.submit(job)

    async def close(self) -> None:
        await self._batcher.close()

    async def _run(self, jobs: Sequence[SettleJob]) -> list[Outcome[SetlInfo | Alone]]:
        now = clock.now()
        outcomes: list[Outcome[SetlInfo | Alone]] = [ALONE] * len(jobs)
        async with self._pool.acquire() as conn:
            reads = await read_jobs(conn, jobs, self._rules, now)
            planned: list[tuple[int, Planned]] = []
            for i, (job, read) in enumerate(zip(jobs, reads, strict=True)):
                if isinstance(read, CardsvcError):
                    outcomes[i] = read
                elif read.earlier is None and not read.token_used:
                    try:
                        planned.append((i, plan(self._params, self._rules, job, read, now)))
                    except CardsvcError as exc:  # refused by the policy: its own answer
                        outcomes[i] = exc
            while planned:
                try:
                    written = await write_planned(conn, [p for _, p in planned])
                except _SETTLE_ALONE_ON:
                    # Another worker's request won an index at this instant, or the batch
                    # met another transaction's locks: nothing was written, each settles
                    # alone (the refused one gets its own answer there).
                    break
                if written.ok:
                    for i, p in planned:
                        outcomes[i] = p.info
                    break
                # Some accounts or visit lines changed since their read: nothing was
                # written. A settlement whose lines changed is refused (retryable); of the
                # others, those whose accounts did not change are written again at once,
                # the rest settle alone.
                metrics.SETTLEMENT_RACES_LOST.inc(len(planned) - len(written.locked))
                for i, p in planned:
                    if p.write.setl_id in written.lines_lost:
                        outcomes[i] = lines_changed(p.job.mdtrt_id)
                planned = [
                    (i, p)
                    for i, p in planned
                    if p.job.psn_no in written.locked and p.write.setl_id not in written.lines_lost
                ]
        return outcomes
