"""Pre-settle, settle, reverse and look up settlements.

A settlement goes through the worker's pipeline (``pipeline``): batched with the others that
arrived meanwhile, one read, the pure policy, one all-or-nothing write and commit. The rare
request the pipeline cannot settle in a batch (a retry of a settled Idempotency-Key, a
spent card token, a person whose account changed meanwhile, an index another worker's
request won) is settled here by itself, under its person's lock, with the same read, plan
and write. The ``Idempotency-Key`` is looked up with the snapshot and a unique index backs
it, so a retried request returns the first result and never settles twice.
"""

from __future__ import annotations

import asyncpg
import msgspec
import structlog

from cardsvc import clock
from cardsvc.audit.services import AuditLog
from cardsvc.batching import BatcherFull
from cardsvc.cardauth.services import TOKEN_USE_INDEX, CardTokens, card_token_used, token_use_id
from cardsvc.db import Connection, Pool, transaction
from cardsvc.errors import (
    CardsvcError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
)
from cardsvc.ledger import services as ledger
from cardsvc.ledger.postings import reversed_postings
from cardsvc.national import visits
from cardsvc.ops import metrics
from cardsvc.settlement import policy
from cardsvc.settlement.flags import SupervisionRules
from cardsvc.settlement.models import Reversal, SetlInfo, SettleRequest
from cardsvc.settlement.params import CURRENT_POLICY_VERSION, load_params
from cardsvc.settlement.pipeline import (
    SettlementPipeline,
    lines_changed,
    read_jobs,
    write_planned,
)
from cardsvc.settlement.plan import (
    GATEWAY_KEY_PREFIX,
    SettleJob,
    item_codes,
    plan,
    policy_request,
    request_hash,
    setl_info,
    stored_setl_info,
    year_args,
)
from cardsvc.settlement.snapshot import YEAR_COLUMNS, StayKey, load_snapshot
from cardsvc.terminals.admission import admit
from cardsvc.web.caller import Caller

log = structlog.get_logger(__name__)

_year_delta = msgspec.json.Decoder(policy.YearState)

# Takes a reversed settlement's delta back. An UPDATE, not the upsert with negative values:
# PostgreSQL checks the CHECK (>= 0) constraints on the proposed row before it looks for
# the conflict. The row exists, since its settlement wrote it.
_YEAR_GIVE_BACK = f"""
UPDATE year_states SET {", ".join(f"{c} = {c} - ${i}" for i, c in enumerate(YEAR_COLUMNS, 3))}
WHERE psn_no = $1 AND year = $2
"""  # noqa: S608 - constant column names


class SettlementService:
    def __init__(
        self,
        pool: Pool,
        tokens: CardTokens,
        audit: AuditLog,
        rules: SupervisionRules | None = None,
        *,
        max_batch: int = 64,
    ) -> None:
        self._pool, self._tokens, self._audit = pool, tokens, audit
        self._params = load_params(CURRENT_POLICY_VERSION)
        self._rules = rules or self._params.supervision
        self._pipeline = SettlementPipeline(pool, self._params, self._rules, max_batch=max_batch)

    async def close(self) -> None:
        """After the last request: the pipeline's loop ends."""
        await self._pipeline.close()

    async def preview(self, caller: Caller, req: SettleRequest) -> SetlInfo:
        """The settlement as it would be now; writes nothing, locks nothing."""
        claims = self._tokens.check(caller, req.card_token)
        return await self.preview_request(
            caller.facility(), claims.psn_no, claims.card_no, policy_request(req), req.mdtrt_id
        )

    async def preview_request(
        self,
        fixmedins_code: str,
        psn_no: str,
        card_no: str,
        request: policy.SettlementRequest,
        mdtrt_id: str,
        stay: StayKey | None = None,
    ) -> SetlInfo:
        """The settlement of ``request`` as it would be now (also the gateway's 2206/2303;
        ``stay``: a part of that stay, see ``SettleJob.stay``)."""
        now = clock.now()
        async with self._pool.acquire() as conn:
            snapshot = await load_snapshot(
                conn,
                psn_no=psn_no,
                card_no=card_no,
                fixmedins_code=fixmedins_code,
                item_codes=item_codes(request),
                injury_case_id=request.injury_case_id,
                settle_date=clock.business_date(now),
                stay=stay,
            )
        split = policy.settle(self._params, snapshot, request)
        return setl_info(
            setl_id=None,
            setl_time=now,
            psn_no=psn_no,
            card_no=card_no,
            fixmedins_code=fixmedins_code,
            request=request,
            mdtrt_id=mdtrt_id,
            split=split,
            status="preview",
        )

    async def settle(self, caller: Caller, idempotency_key: str, req: SettleRequest) -> SetlInfo:
        if idempotency_key.startswith(GATEWAY_KEY_PREFIX):
            raise InvalidRequest(
                f"an Idempotency-Key starting with {GATEWAY_KEY_PREFIX!r} is reserved for the"
                " national gateway's settlements: choose another key",
                code="IDEMPOTENCY_KEY_RESERVED",
            )
        try:
            claims = self._tokens.check(caller, req.card_token)
        except CardsvcError:
            # A retry may carry a token that expired (or a session that ended) since its
            # first attempt: what was settled under its key is still its answer. Such a
            # token names no person, so the stored one's is taken (only this facility's
            # terminals reach this answer, and they may read the settlement anyway).
            if caller.admission is not None:
                await admit(self._pool, caller.admission)
            replay = await self._replay(caller, idempotency_key, req, None)
            if replay is None:
                raise
            return replay
        job = SettleJob(
            caller=caller,
            key=idempotency_key,
            digest=request_hash(req, claims.psn_no),
            request=policy_request(req),
            mdtrt_id=req.mdtrt_id,
            psn_no=claims.psn_no,
            card_no=claims.card_no,
            spends=token_use_id(claims),
            admission=caller.admission,
        )
        return await self.submit(job)

    async def submit(self, job: SettleJob) -> SetlInfo:
        """Settles ``job`` through the pipeline (or by itself, when the pipeline says so):
        every caller's settlement, the native API's and the gateway's, comes through here."""
        try:
            outcome = await self._pipeline.submit(job)
        except BatcherFull:
            raise ServiceUnavailable(
                "too many settlements are waiting in this worker: retry in a moment",
                code="SETTLEMENT_QUEUE_FULL",
            ) from None
        if isinstance(outcome, SetlInfo):
            return outcome
        return await self._settle_alone(job)

    async def _settle_alone(self, job: SettleJob) -> SetlInfo:
        """One settlement by itself, under its person's lock: the pipeline's rare cases (a
        retry of a settled key, a spent token, a busy account, an index another worker's
        request won)."""
        metrics.SETTLEMENT_LOCKED.inc()
        caller = job.caller
        try:
            async with transaction(self._pool) as conn:
                await conn.execute(
                    "SELECT 1 FROM psn_accounts WHERE psn_no = $1 FOR UPDATE", job.psn_no
                )
                now = clock.now()
                [read] = await read_jobs(conn, [job], self._rules, now)
                if isinstance(read, CardsvcError):
                    raise read
                if read.token_used and read.earlier is None:  # one PIN entry, one settlement
                    raise card_token_used()  # (admitted by the route)
                if read.earlier is None:
                    planned = plan(self._params, self._rules, job, read, now)
                    written = await write_planned(conn, [planned])
                    if written.lines_lost:
                        raise lines_changed(job.mdtrt_id)
                    if not written.ok:
                        raise RuntimeError("a locked account changed under its lock")
                    return planned.info
            # Settled before (by a retry's first attempt): admitted on its own, outside the
            # transaction, so that a retry refused as another request still spends its nonce.
            if job.admission is not None and not job.admission.done:
                await admit(self._pool, job.admission)
            earlier = await self._pool.fetchrow(
                "SELECT * FROM settlements WHERE setl_id = $1", read.earlier
            )
            return _same_request(earlier, job.digest)
        except asyncpg.UniqueViolationError as exc:
            # The same key, settled at this instant by a concurrent request: answer as a
            # retry would be answered (admitted first: the failed write recorded nothing,
            # and a nonce seen before is refused there). Or the same card token, spent at
            # this instant by another settlement.
            if caller.admission is not None and not caller.admission.done:
                await admit(self._pool, caller.admission)
            row = await self._stored(caller, job.key)
            if row is not None:
                return _same_request(row, job.digest)
            if exc.constraint_name == TOKEN_USE_INDEX:
                raise card_token_used() from None
            raise

    async def _replay(
        self, caller: Caller, key: str, req: SettleRequest, psn_no: str | None
    ) -> SetlInfo | None:
        """The settlement stored under ``key``, if ``req`` of ``psn_no`` (None: the stored
        settlement's person) is the request it answered."""
        row = await self._stored(caller, key)
        if row is None:
            return None
        return _same_request(row, request_hash(req, psn_no or row["psn_no"]))

    async def _stored(self, caller: Caller, key: str) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._pool.fetchrow(
            "SELECT * FROM settlements WHERE fixmedins_code = $1 AND idempotency_key = $2",
            caller.facility(),
            key,
        )
        return row

    async def get(self, caller: Caller, setl_id: str) -> SetlInfo:
        row = await self._pool.fetchrow("SELECT * FROM settlements WHERE setl_id = $1", setl_id)
        if row is None:
            raise NotFound("no such settlement", code="SETTLEMENT_NOT_FOUND")
        _check_own(caller, row["fixmedins_code"])
        return stored_setl_info(row)

    async def reverse(self, caller: Caller, setl_id: str, reason: str) -> Reversal:
        """Give back exactly what the settlement took; a second call returns the first
        reversal. Terminals may reverse only their own facility's settlements."""
        psn_no = await self._pool.fetchval(
            "SELECT psn_no FROM settlements WHERE setl_id = $1", setl_id
        )
        if psn_no is None:
            raise NotFound("no such settlement", code="SETTLEMENT_NOT_FOUND")
        async with transaction(self._pool) as conn:
            return await reverse_locked(conn, self._audit, caller, setl_id, psn_no, reason)


async def reverse_locked(
    conn: Connection, audit: AuditLog, caller: Caller, setl_id: str, psn_no: str, reason: str
) -> Reversal:
    """The reversal inside the caller's transaction (also used by review rejection)."""
    await conn.execute("SELECT 1 FROM psn_accounts WHERE psn_no = $1 FOR UPDATE", psn_no)
    row = await conn.fetchrow("SELECT * FROM settlements WHERE setl_id = $1 FOR UPDATE", setl_id)
    _check_own(caller, row["fixmedins_code"])
    existing = await conn.fetchrow("SELECT * FROM reversals WHERE setl_id = $1", setl_id)
    if existing is not None:
        return _reversal(existing)
    now = clock.now()
    balc = await conn.fetchval(
        "UPDATE psn_accounts SET balance = balance + $2 WHERE psn_no = $1 RETURNING balance",
        psn_no,
        row["acct_pay"],
    )
    delta = _year_delta.decode(row["year_delta"])
    if any(year_args(delta)):
        await conn.execute(_YEAR_GIVE_BACK, psn_no, row["setl_date"].year, *year_args(delta))
    original = await ledger.entries_of(conn, "settlement", setl_id)
    if original:
        await ledger.post(conn, "reversal", setl_id, reversed_postings(original))
    # A settlement still waiting for review needs no decision once it is reversed.
    await conn.execute(
        "UPDATE settlements SET status = 'reversed', review_status = CASE review_status"
        " WHEN 'pending' THEN 'withdrawn' ELSE review_status END WHERE setl_id = $1",
        setl_id,
    )
    # A gateway settlement's visit lines can be settled again, whoever reversed it (the
    # facility, the administrator, a rejected review); none for a native settlement.
    await visits.release(conn, setl_id)
    reversal = await conn.fetchrow(
        """
        INSERT INTO reversals (reversal_id, setl_id, psn_no, fixmedins_code, actor, reason,
                               revs_time, revs_date, acct_refund, fund_refund, balc)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *
        """,
        "R" + setl_id[1:],
        setl_id,
        psn_no,
        row["fixmedins_code"],
        caller.actor,
        reason,
        now,
        clock.business_date(now),
        row["acct_pay"],
        row["fund_pay_sumamt"],
        balc,
    )
    await audit.record(
        conn,
        caller,
        action="settlement.reversed",
        object_type="settlement",
        object_id=setl_id,
        data={
            "reason": reason,
            "acct_refund": row["acct_pay"],
            "fund_refund": row["fund_pay_sumamt"],
        },
    )
    return _reversal(reversal)


def _check_own(caller: Caller, fixmedins_code: str) -> None:
    """A facility's terminals (and gateway clients) see and reverse only their own
    facility's settlements."""
    if caller.kind != "operator" and fixmedins_code != caller.fixmedins_code:
        raise Forbidden("this settlement belongs to another facility", code="NOT_OWN_FACILITY")


def _reversal(row: asyncpg.Record) -> Reversal:
    return Reversal(
        reversal_id=row["reversal_id"],
        setl_id=row["setl_id"],
        revs_time=row["revs_time"],
        acct_refund=row["acct_refund"],
        fund_refund=row["fund_refund"],
        balc=row["balc"],
        reason=row["reason"],
    )


def _same_request(row: asyncpg.Record, digest: bytes) -> SetlInfo:
    if bytes(row["request_hash"]) != digest:
        raise Conflict(
            "this Idempotency-Key was used for another request",
            code="IDEMPOTENCY_MISMATCH",
            details={"setl_id": row["setl_id"]},
        )
    return stored_setl_info(row)
