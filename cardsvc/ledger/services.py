"""Writing ledger transactions and proving the ledger."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from cardsvc.db import Connection, Pool
from cardsvc.ledger.postings import Posting, check_balanced


class BalanceMismatch(msgspec.Struct, frozen=True):
    account: str
    stored: int | None
    derived: int


class LedgerProof(msgspec.Struct, frozen=True):
    ok: bool
    transactions: int
    entries: int
    unbalanced: list[int]
    balance_mismatches: list[BalanceMismatch]


async def post(conn: Connection, kind: str, ref: str, postings: Sequence[Posting]) -> int:
    """Write one balanced ledger transaction in one round trip; returns its txn_id."""
    check_balanced(postings)
    txn_id: int = await conn.fetchval(
        """
        WITH txn AS (INSERT INTO ledger_txns (kind, ref) VALUES ($1, $2) RETURNING txn_id),
        entries AS (
            INSERT INTO ledger_entries (txn_id, line, account, side, amount)
            SELECT txn.txn_id, e.line, e.account, e.side, e.amount
            FROM txn, unnest($3::smallint[], $4::text[], $5::text[], $6::bigint[])
                AS e(line, account, side, amount)
        )
        SELECT txn_id FROM txn
        """,
        kind,
        ref,
        list(range(1, len(postings) + 1)),
        [p.account for p in postings],
        [p.side for p in postings],
        [p.amount for p in postings],
    )
    return txn_id


async def write_entries(conn: Connection, txn_id: int, postings: Sequence[Posting]) -> None:
    """Entries of a ledger transaction created separately (when its id was needed first)."""
    check_balanced(postings)
    await conn.execute(
        """
        INSERT INTO ledger_entries (txn_id, line, account, side, amount)
        SELECT $1, e.line, e.account, e.side, e.amount
        FROM unnest($2::smallint[], $3::text[], $4::text[], $5::bigint[])
            AS e(line, account, side, amount)
        """,
        txn_id,
        list(range(1, len(postings) + 1)),
        [p.account for p in postings],
        [p.side for p in postings],
        [p.amount for p in postings],
    )


class Ledger:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def prove(self, limit: int = 20) -> LedgerProof:
        """Every transaction balances; every stored account balance equals its entries."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            counts = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM ledger_txns) AS txns,"
                " (SELECT count(*) FROM ledger_entries) AS entries"
            )
            unbalanced = await conn.fetch(
                """
                SELECT t.txn_id FROM ledger_txns t LEFT JOIN ledger_entries e USING (txn_id)
                GROUP BY t.txn_id
                HAVING coalesce(sum(CASE e.side WHEN 'D' THEN e.amount ELSE -e.amount END), 0) <> 0
                    OR count(e.txn_id) = 0
                ORDER BY t.txn_id LIMIT $1
                """,
                limit,
            )
            mismatches = await conn.fetch(
                """
                WITH derived AS (
                    SELECT substr(account, 8) AS psn_no,
                           sum(CASE side WHEN 'C' THEN amount ELSE -amount END) AS balance
                    FROM ledger_entries WHERE account LIKE 'person:%' GROUP BY account
                )
                SELECT 'person:' || coalesce(a.psn_no, d.psn_no) AS account,
                       a.balance AS stored, coalesce(d.balance, 0) AS derived
                FROM psn_accounts a FULL JOIN derived d USING (psn_no)
                WHERE a.balance IS DISTINCT FROM coalesce(d.balance, 0)
                ORDER BY 1 LIMIT $1
                """,
                limit,
            )
        unbalanced_ids = [r["txn_id"] for r in unbalanced]
        balance_mismatches = [BalanceMismatch(**dict(r)) for r in mismatches]
        return LedgerProof(
            ok=not unbalanced_ids and not balance_mismatches,
            transactions=counts["txns"],
            entries=counts["entries"],
            unbalanced=unbalanced_ids,
            balance_mismatches=balance_mismatches,
        )
