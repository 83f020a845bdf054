"""Writing ledger transactions and proving the ledger."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from cardsvc.db import Connection, Pool, extend_bounds
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
    unbooked_settlements: list[str]


def entry_columns(postings: Sequence[Posting]) -> tuple[list[int], list[str], list[str], list[int]]:
    """A balanced transaction's entries as the columns (line, account, side, amount) that
    ``unnest`` turns back into rows: every entry of a transaction in one statement."""
    check_balanced(postings)
    return (
        list(range(1, len(postings) + 1)),
        [p.account for p in postings],
        [p.side for p in postings],
        [p.amount for p in postings],
    )


async def post(conn: Connection, kind: str, ref: str, postings: Sequence[Posting]) -> int:
    """Write one balanced ledger transaction in one round trip; returns its txn_id."""
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
        *entry_columns(postings),
    )
    return txn_id


async def write_entries(conn: Connection, txn_id: int, postings: Sequence[Posting]) -> None:
    """Entries of a ledger transaction created separately (when its id was needed first)."""
    await conn.execute(
        """
        INSERT INTO ledger_entries (txn_id, line, account, side, amount)
        SELECT $1, e.line, e.account, e.side, e.amount
        FROM unnest($2::smallint[], $3::text[], $4::text[], $5::bigint[])
            AS e(line, account, side, amount)
        """,
        txn_id,
        *entry_columns(postings),
    )


async def entries_of(conn: Connection, kind: str, ref: str) -> list[Posting]:
    """The entries of the ledger transactions of this kind and ref, in line order."""
    rows = await conn.fetch(
        """
        SELECT e.account, e.side, e.amount
        FROM ledger_txns t JOIN ledger_entries e USING (txn_id)
        WHERE t.kind = $1 AND t.ref = $2 ORDER BY e.txn_id, e.line
        """,
        kind,
        ref,
    )
    return [Posting(r["account"], r["side"], r["amount"]) for r in rows]


# A settlement owes its facility fund_pay_sumamt + acct_pay: its ledger transaction must
# credit exactly that, and a reversed one must have a reversal that takes exactly that back.
# All sums numeric: no stored amount, however large, can make the proof fail to answer.
_UNBOOKED_SETTLEMENTS = """
WITH booked AS (
    SELECT t.ref,
           sum(e.amount) FILTER (WHERE t.kind = 'settlement' AND e.side = 'C') AS paid,
           sum(e.amount) FILTER (WHERE t.kind = 'reversal' AND e.side = 'C') AS back
    FROM ledger_txns t JOIN ledger_entries e USING (txn_id)
    WHERE t.kind IN ('settlement', 'reversal') GROUP BY t.ref
)
SELECT s.setl_id FROM settlements s LEFT JOIN booked b ON b.ref = s.setl_id
WHERE coalesce(b.paid, 0) <> s.fund_pay_sumamt::numeric + s.acct_pay
   OR coalesce(b.back, 0) <> CASE WHEN s.status = 'reversed'
                                  THEN s.fund_pay_sumamt::numeric + s.acct_pay ELSE 0 END
ORDER BY s.setl_id LIMIT $1
"""


class Ledger:
    def __init__(self, pool: Pool, *, timeout: float | None = None) -> None:
        """``timeout`` bounds each statement of the proof (None: the pool's bound); the
        proof reads every ledger entry, which takes tens of seconds at a million settlements."""
        self._pool, self._timeout = pool, timeout

    async def prove(self, limit: int = 20) -> LedgerProof:
        """Every transaction balances; every stored account balance equals its entries;
        every settlement (and reversal) is booked for exactly what it owes the facility."""
        t = self._timeout
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            if t is not None:
                await extend_bounds(conn, t)
            counts = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM ledger_txns) AS txns,"
                " (SELECT count(*) FROM ledger_entries) AS entries",
                timeout=t,
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
                timeout=t,
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
                timeout=t,
            )
            unbooked = await conn.fetch(_UNBOOKED_SETTLEMENTS, limit, timeout=t)
        unbalanced_ids = [r["txn_id"] for r in unbalanced]
        balance_mismatches = [
            BalanceMismatch(account=r["account"], stored=r["stored"], derived=int(r["derived"]))
            for r in mismatches
        ]
        unbooked_ids = [r["setl_id"] for r in unbooked]
        return LedgerProof(
            ok=not unbalanced_ids and not balance_mismatches and not unbooked_ids,
            transactions=counts["txns"],
            entries=counts["entries"],
            unbalanced=unbalanced_ids,
            balance_mismatches=balance_mismatches,
            unbooked_settlements=unbooked_ids,
        )
