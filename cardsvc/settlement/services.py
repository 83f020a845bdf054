"""Pre-settle, settle, reverse and look up settlements.

A settlement reads its snapshot (with the account row's version), applies the pure policy,
then writes the settlement, its lines, its ledger entries, the account balance, the year
state, supervision flags and the audit entry in one statement that goes through only if the
account row still has that version (optimistic concurrency; see ``snapshot`` and
``store``): two round trips, no lock held while Python computes. A settlement that loses
that race tries again, and after a few lost races takes the person's lock. The
``Idempotency-Key`` is looked up in the snapshot and a unique index backs it, so a retried
request returns the first result and never settles twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from typing import Any, Literal

import asyncpg
import msgspec
import structlog

from cardsvc import clock
from cardsvc.audit.services import AuditLog, new_entry
from cardsvc.cardauth.services import TOKEN_USE_INDEX, CardTokens, card_token_used, token_use_id
from cardsvc.db import Connection, Pool, transaction
from cardsvc.errors import CardsvcError, Conflict, Forbidden, NotFound
from cardsvc.ledger import services as ledger
from cardsvc.ledger.postings import reversed_postings
from cardsvc.ops import metrics
from cardsvc.settlement import policy
from cardsvc.settlement.flags import SupervisionRules, flags_for
from cardsvc.settlement.models import FundPayment, Reversal, SetlInfo, SettleRequest
from cardsvc.settlement.params import CURRENT_POLICY_VERSION, load_params
from cardsvc.settlement.postings import settlement_postings
from cardsvc.settlement.snapshot import YEAR_COLUMNS, load_snapshot, read_for_settle
from cardsvc.settlement.store import SettlementWrite, settlement_statement
from cardsvc.terminals.admission import admit, nonce_replayed
from cardsvc.web.caller import Admission, Caller

log = structlog.get_logger(__name__)

# Optimistic tries before a settlement waits on its person's lock. Two settlements of one
# person within a few milliseconds are rare (one card, one counter), so the first try
# nearly always wins; the locked path bounds the work when they are not.
OPTIMISTIC_ATTEMPTS = 3

_request_encoder = msgspec.json.Encoder()
_json = msgspec.json.Encoder()
_setldetail = msgspec.json.Decoder(list[FundPayment])
_year_delta = msgspec.json.Decoder(policy.YearState)

# Takes a reversed settlement's delta back. An UPDATE, not the upsert with negative values:
# PostgreSQL checks the CHECK (>= 0) constraints on the proposed row before it looks for
# the conflict. The row exists, since its settlement wrote it.
_YEAR_GIVE_BACK = f"""
UPDATE year_states SET {", ".join(f"{c} = {c} - ${i}" for i, c in enumerate(YEAR_COLUMNS, 3))}
WHERE psn_no = $1 AND year = $2
"""  # noqa: S608 - constant column names


def request_hash(req: SettleRequest, psn_no: str) -> bytes:
    """Same decoded request for the same person, same hash, whatever the JSON spacing or
    field order was.

    The person (``psn_no`` of the verified card token) is part of it: the same key and body
    with another person's card is another request. The card token itself is left out: a
    terminal that lost the answer may have authenticated the card again before it retries,
    and the retry must still find its settlement."""
    body = _request_encoder.encode(msgspec.structs.replace(req, card_token=""))
    return hashlib.sha256(psn_no.encode() + b"\n" + body).digest()


def new_setl_id(now: dt.datetime) -> str:
    """``S``, the business date, the microsecond of that day (10 hex digits) and 40 random
    bits (10 hex digits). A day's ids sort by time, so the indexes keyed by them (the
    settlement's, its lines', its ledger transaction's ref, its audit entry's object) grow at
    their right edge instead of touching a random page of a large index per settlement."""
    local = now.astimezone(clock.BUSINESS_TZ)
    of_day = local - local.replace(hour=0, minute=0, second=0, microsecond=0)
    micros = of_day // dt.timedelta(microseconds=1)
    return f"S{local:%Y%m%d}{micros:010x}{secrets.token_hex(5)}"


def _policy_request(req: SettleRequest) -> policy.SettlementRequest:
    return policy.SettlementRequest(
        insutype=req.insutype,
        med_type=req.med_type,
        acct_used_flag=req.acct_used_flag,
        injury_case_id=req.injury_case_id,
        delivery_type=req.delivery_type,
        lines=tuple(
            policy.FeeLine(code=f.code, unit_price=f.unit_price, quantity=f.quantity)
            for f in req.feedetail
        ),
    )


def _setl_info(
    *,
    setl_id: str | None,
    setl_time: dt.datetime,
    psn_no: str,
    card_no: str,
    fixmedins_code: str,
    req: SettleRequest,
    split: policy.Split,
    status: Literal["preview", "settled"],
) -> SetlInfo:
    return SetlInfo(
        setl_id=setl_id,
        setl_time=setl_time,
        psn_no=psn_no,
        card_no=card_no,
        fixmedins_code=fixmedins_code,
        insutype=req.insutype,
        med_type=req.med_type,
        mdtrt_id=req.mdtrt_id,
        policy_version=split.policy_version,
        setldetail=[
            FundPayment(fund_pay_type=f.fund_pay_type, fund_payamt=f.fund_payamt)
            for f in split.setldetail
        ],
        review_required=split.review_required,
        status=status,
        **{name: getattr(split, name) for name in policy.STEP3_AMOUNTS},
    )


def stored_setl_info(row: asyncpg.Record) -> SetlInfo:
    return SetlInfo(
        setl_id=row["setl_id"],
        setl_time=row["setl_time"],
        psn_no=row["psn_no"],
        card_no=row["card_no"],
        fixmedins_code=row["fixmedins_code"],
        insutype=row["insutype"],
        med_type=row["med_type"],
        mdtrt_id=row["mdtrt_id"],
        policy_version=row["policy_version"],
        setldetail=_setldetail.decode(row["setldetail"]),
        review_required=row["review_status"] != "none",
        status=row["status"],
        **{name: row[name] for name in policy.STEP3_AMOUNTS},
    )


def _item_codes(req: SettleRequest) -> list[str]:
    return sorted({f.code for f in req.feedetail})


def _settlement_row(
    caller: Caller,
    key: str,
    digest: bytes,
    req: SettleRequest,
    snapshot: policy.Snapshot,
    split: policy.Split,
    setl_id: str,
    card_no: str,
    card_auth_id: bytes,
    now: dt.datetime,
) -> dict[str, Any]:
    """The settlements row, column by column."""
    return {
        "setl_id": setl_id,
        "psn_no": snapshot.psn_no,
        "card_no": card_no,
        "fixmedins_code": snapshot.facility.fixmedins_code,
        "fixmedins_type": snapshot.facility.type,
        "terminal_id": caller.terminal_id,
        "idempotency_key": key,
        "request_hash": digest,
        "insutype": req.insutype,
        "med_type": req.med_type,
        "mdtrt_id": req.mdtrt_id,
        "injury_case_id": req.injury_case_id,
        "delivery_type": req.delivery_type,
        "acct_used_flag": req.acct_used_flag,
        "policy_version": split.policy_version,
        "setl_time": now,
        "setl_date": clock.business_date(now),
        **{name: getattr(split, name) for name in policy.STEP3_AMOUNTS},
        "setldetail": _json.encode(list(split.setldetail)).decode(),
        "year_delta": _json.encode(split.year_delta).decode(),
        "review_status": "pending" if split.review_required else "none",
        "card_auth_id": card_auth_id,  # spends the card token (a unique index)
    }


def _year_args(delta: policy.YearState) -> list[int]:
    return [getattr(delta, c) for c in YEAR_COLUMNS]


class SettlementService:
    def __init__(
        self,
        pool: Pool,
        tokens: CardTokens,
        audit: AuditLog,
        rules: SupervisionRules | None = None,
    ) -> None:
        self._pool, self._tokens, self._audit = pool, tokens, audit
        self._params = load_params(CURRENT_POLICY_VERSION)
        self._rules = rules or self._params.supervision

    async def preview(self, caller: Caller, req: SettleRequest) -> SetlInfo:
        """The settlement as it would be now; writes nothing, locks nothing."""
        claims = self._tokens.check(caller, req.card_token)
        now = clock.now()
        async with self._pool.acquire() as conn:
            snapshot = await load_snapshot(
                conn,
                psn_no=claims.psn_no,
                card_no=claims.card_no,
                fixmedins_code=caller.facility(),
                item_codes=_item_codes(req),
                injury_case_id=req.injury_case_id,
                settle_date=clock.business_date(now),
            )
        split = policy.settle(self._params, snapshot, _policy_request(req))
        return _setl_info(
            setl_id=None,
            setl_time=now,
            psn_no=claims.psn_no,
            card_no=claims.card_no,
            fixmedins_code=caller.facility(),
            req=req,
            split=split,
            status="preview",
        )

    async def settle(self, caller: Caller, idempotency_key: str, req: SettleRequest) -> SetlInfo:
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
        digest = request_hash(req, claims.psn_no)
        args = (caller, idempotency_key, digest, req, claims.psn_no, claims.card_no)
        spends = token_use_id(claims)
        admission = caller.admission  # admitted by the first attempt
        try:
            for _ in range(OPTIMISTIC_ATTEMPTS):
                async with self._pool.acquire() as conn:
                    done = await self._settle_once(
                        conn, *args, spends=spends, lock=False, admission=admission
                    )
                admission = None
                if done is not None:
                    return done
                metrics.SETTLEMENT_RACES_LOST.inc()
            # The person's account keeps changing under us: queue on its lock instead.
            metrics.SETTLEMENT_LOCKED.inc()
            async with transaction(self._pool) as conn:
                done = await self._settle_once(conn, *args, spends=spends, lock=True)
            if done is None:
                raise RuntimeError("a locked account changed under its lock")
            return done
        except asyncpg.UniqueViolationError as exc:
            # The same key, settled at this instant by a concurrent request: answer as a
            # retry would be answered (admitted first: the failed write recorded nothing).
            # Or the same card token, spent at this instant by another settlement.
            if caller.admission is not None and not caller.admission.done:
                await admit(self._pool, caller.admission)
            replay = await self._replay(caller, idempotency_key, req, claims.psn_no)
            if replay is not None:
                return replay
            if exc.constraint_name == TOKEN_USE_INDEX:
                raise card_token_used() from None
            raise

    async def _replay(
        self, caller: Caller, key: str, req: SettleRequest, psn_no: str | None
    ) -> SetlInfo | None:
        """The settlement stored under ``key``, if ``req`` of ``psn_no`` (None: the stored
        settlement's person) is the request it answered."""
        row = await self._pool.fetchrow(
            "SELECT * FROM settlements WHERE fixmedins_code = $1 AND idempotency_key = $2",
            caller.facility(),
            key,
        )
        if row is None:
            return None
        return _same_request(row, request_hash(req, psn_no or row["psn_no"]))

    async def _settle_once(
        self,
        conn: Connection,
        caller: Caller,
        key: str,
        digest: bytes,
        req: SettleRequest,
        psn_no: str,
        card_no: str,
        *,
        spends: bytes,
        lock: bool,
        admission: Admission | None = None,
    ) -> SetlInfo | None:
        """One read and one write: the settlement, or None if the person's account changed
        between the two (nothing was written then). Outside a transaction each statement
        is its own, and the write commits the settlement before it is answered. With
        ``admission`` the read also checks the terminal's standing and the write records
        the nonce (refusing a replay); paths that return before the write admit on their
        own, and errors before it are admitted by the route's decorator."""
        now = clock.now()
        today = clock.business_date(now)
        read = await read_for_settle(
            conn,
            psn_no=psn_no,
            card_no=card_no,
            fixmedins_code=caller.facility(),
            item_codes=_item_codes(req),
            injury_case_id=req.injury_case_id,
            idempotency_key=key,
            card_auth_id=spends,
            now=now,
            settle_date=today,
            other_facility_window=dt.timedelta(seconds=self._rules.other_facility_window_s),
            lock=lock,
            standing_of=admission,
        )
        if read.earlier is not None:  # settled before (by a retry's first attempt)
            if admission is not None:
                await admit(conn, admission)
            earlier = await conn.fetchrow(
                "SELECT * FROM settlements WHERE setl_id = $1", read.earlier
            )
            return _same_request(earlier, digest)
        if read.token_used:  # one PIN entry, one settlement (refused: admitted by the route)
            raise card_token_used()
        snapshot = read.snapshot
        split = policy.settle(self._params, snapshot, _policy_request(req))
        setl_id = new_setl_id(now)
        flags = flags_for(
            self._rules,
            at_pharmacy=snapshot.facility.type == "pharmacy",
            medfee_sumamt=split.medfee_sumamt,
            recent=read.recent,
        )
        sql, args = settlement_statement(
            SettlementWrite(
                row=_settlement_row(
                    caller, key, digest, req, snapshot, split, setl_id, card_no, spends, now
                ),
                lines=[
                    (
                        n,
                        ln.code,
                        ln.chrgitm_lv,
                        f.unit_price,
                        f.quantity,
                        ln.total,
                        ln.over,
                        ln.fulamt_ownpay,
                        ln.preselfpay,
                        ln.inscp,
                    )
                    for n, (ln, f) in enumerate(zip(split.lines, req.feedetail, strict=True), 1)
                ],
                postings=settlement_postings(psn_no, snapshot.facility.fixmedins_code, split),
                acct_pay=split.acct_pay,
                account_version=read.account_version,
                year=today.year,
                year_delta=_year_args(split.year_delta),
                flags=flags,
                nonce=None if admission is None else (admission.terminal_id, admission.nonce),
                audit=new_entry(
                    caller.actor,
                    "settlement.settled",
                    "settlement",
                    setl_id,
                    {
                        "psn_no": psn_no,
                        "fixmedins_code": snapshot.facility.fixmedins_code,
                        "medfee_sumamt": split.medfee_sumamt,
                        "fund_pay_sumamt": split.fund_pay_sumamt,
                        "acct_pay": split.acct_pay,
                        "review_required": split.review_required,
                    },
                ),
            )
        )
        outcome = await conn.fetchrow(sql, *args)
        if admission is not None:
            admission.done = True  # only now: a failed statement recorded no nonce
        if not outcome["fresh"]:
            raise nonce_replayed()
        if not outcome["written"]:
            return None
        if flags:
            log.info("supervision_flags", setl_id=setl_id, rules=[f.rule for f in flags])
        return _setl_info(
            setl_id=setl_id,
            setl_time=now,
            psn_no=psn_no,
            card_no=card_no,
            fixmedins_code=snapshot.facility.fixmedins_code,
            req=req,
            split=split,
            status="settled",
        )

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
    if any(_year_args(delta)):
        await conn.execute(_YEAR_GIVE_BACK, psn_no, row["setl_date"].year, *_year_args(delta))
    original = await ledger.entries_of(conn, "settlement", setl_id)
    if original:
        await ledger.post(conn, "reversal", setl_id, reversed_postings(original))
    # A settlement still waiting for review needs no decision once it is reversed.
    await conn.execute(
        "UPDATE settlements SET status = 'reversed', review_status = CASE review_status"
        " WHEN 'pending' THEN 'withdrawn' ELSE review_status END WHERE setl_id = $1",
        setl_id,
    )
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
    await audit.append(
        conn,
        actor=caller.actor,
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
    """A facility's terminals see and reverse only their own facility's settlements."""
    if caller.kind != "admin" and fixmedins_code != caller.fixmedins_code:
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
