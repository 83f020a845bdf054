"""Personal-account credits: a batch is atomic, and each entry is idempotent by its ref.

A ref seen before with the same person and amount is reported ``already_credited`` and
changes nothing; with another person or amount the whole batch is refused (409).
"""

from __future__ import annotations

from collections import defaultdict

from cardsvc.accounts.models import CreditBatch, CreditBatchResult, CreditEntry, CreditResult
from cardsvc.audit.services import AuditLog
from cardsvc.db import Connection, Pool, transaction
from cardsvc.errors import Conflict, InvalidRequest, NotFound
from cardsvc.ledger import services as ledger
from cardsvc.ledger.postings import CONTRIB_PERSONAL_ACCOUNT, Posting, person_account
from cardsvc.web.caller import Caller


class AccountCredits:
    def __init__(self, pool: Pool, audit: AuditLog) -> None:
        self._pool, self._audit = pool, audit

    async def credit(self, caller: Caller, batch: CreditBatch) -> CreditBatchResult:
        refs = [e.ref for e in batch.entries]
        if len(set(refs)) != len(refs):
            raise InvalidRequest("a ref appears twice in the batch", code="DUPLICATE_REF")
        async with transaction(self._pool) as conn:
            await self._lock_accounts(conn, {e.psn_no for e in batch.entries})
            fresh = await self._record_new(conn, batch.entries)
            await self._check_replays(conn, [e for e in batch.entries if e.ref not in fresh])
            new = [e for e in batch.entries if e.ref in fresh]
            if new:
                await self._apply(caller, conn, new, fresh)
            else:
                await conn.execute("DELETE FROM ledger_txns WHERE txn_id = $1", fresh.txn_id)
        return CreditBatchResult(
            credited=len(new),
            already_credited=len(batch.entries) - len(new),
            entries=[
                CreditResult(
                    ref=e.ref,
                    psn_no=e.psn_no,
                    amount=e.amount,
                    status="credited" if e.ref in fresh else "already_credited",
                )
                for e in batch.entries
            ],
        )

    async def _lock_accounts(self, conn: Connection, psn_nos: set[str]) -> None:
        # A fixed lock order keeps concurrent batches from deadlocking.
        locked = await conn.fetch(
            "SELECT psn_no FROM psn_accounts WHERE psn_no = ANY($1::text[])"
            " ORDER BY psn_no FOR UPDATE",
            sorted(psn_nos),
        )
        missing = psn_nos - {r["psn_no"] for r in locked}
        if missing:
            raise NotFound(
                "no such person", code="PERSON_NOT_FOUND", details={"psn_no": sorted(missing)}
            )

    async def _record_new(self, conn: Connection, entries: list[CreditEntry]) -> _Fresh:
        txn_id = await conn.fetchval(
            "INSERT INTO ledger_txns (kind, ref) VALUES ('account_credit', $1) RETURNING txn_id",
            entries[0].ref,
        )
        # A concurrent batch holding the same ref makes this wait for it, then skip it.
        rows = await conn.fetch(
            """
            INSERT INTO account_credits (ref, psn_no, amount, txn_id)
            SELECT r, p, a, $4 FROM unnest($1::text[], $2::text[], $3::bigint[]) AS e(r, p, a)
            ON CONFLICT (ref) DO NOTHING RETURNING ref
            """,
            [e.ref for e in entries],
            [e.psn_no for e in entries],
            [e.amount for e in entries],
            txn_id,
        )
        return _Fresh(txn_id, {r["ref"] for r in rows})

    async def _check_replays(self, conn: Connection, replays: list[CreditEntry]) -> None:
        if not replays:
            return
        stored = {
            r["ref"]: (r["psn_no"], r["amount"])
            for r in await conn.fetch(
                "SELECT ref, psn_no, amount FROM account_credits WHERE ref = ANY($1::text[])",
                [e.ref for e in replays],
            )
        }
        differing = [e.ref for e in replays if stored.get(e.ref) != (e.psn_no, e.amount)]
        if differing:
            raise Conflict(
                "a ref was already used for another credit",
                code="IDEMPOTENCY_MISMATCH",
                details={"refs": differing},
            )

    async def _apply(
        self, caller: Caller, conn: Connection, new: list[CreditEntry], fresh: _Fresh
    ) -> None:
        per_person: dict[str, int] = defaultdict(int)
        for e in new:
            per_person[e.psn_no] += e.amount
        await conn.execute(
            """
            UPDATE psn_accounts a SET balance = a.balance + s.amount
            FROM unnest($1::text[], $2::bigint[]) AS s(psn_no, amount)
            WHERE a.psn_no = s.psn_no
            """,
            list(per_person),
            list(per_person.values()),
        )
        postings = [Posting(CONTRIB_PERSONAL_ACCOUNT, "D", sum(e.amount for e in new))]
        postings += [Posting(person_account(e.psn_no), "C", e.amount) for e in new]
        await ledger.write_entries(conn, fresh.txn_id, postings)
        await self._audit.record(
            conn,
            caller,
            action="account.credited",
            object_type="ledger_txn",
            object_id=str(fresh.txn_id),
            data={"count": len(new), "total": postings[0].amount},
        )


class _Fresh:
    """The batch's ledger txn and which of its refs were new."""

    def __init__(self, txn_id: int, refs: set[str]) -> None:
        self.txn_id, self.refs = txn_id, refs

    def __contains__(self, ref: object) -> bool:
        return ref in self.refs
