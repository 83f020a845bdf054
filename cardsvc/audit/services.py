"""Appending to and verifying the audit log.

``append`` runs inside the caller's transaction, so an entry exists exactly when the
state change it records was committed. Entries carry ids and masked values only.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from cardsvc.audit.chain import (
    CHAINS,
    AuditEntry,
    ChainBreak,
    body_digest,
    canonical_data,
    chain_of,
    verify_chain,
)
from cardsvc.db import Connection, Pool


class NewEntry(msgspec.Struct, frozen=True):
    """An entry to append: its content, and where in the chains it goes."""

    chain: int
    digest: bytes
    at: dt.datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    data: str

    def params(self) -> tuple[Any, ...]:
        """The parameters of ``append_cte``, in its order."""
        return (
            self.chain,
            self.digest,
            self.at,
            self.actor,
            self.action,
            self.object_type,
            self.object_id,
            self.data,
        )


def new_entry(
    actor: str, action: str, object_type: str, object_id: str, data: dict[str, Any] | None
) -> NewEntry:
    chain, at, text = (
        chain_of(object_type, object_id),
        dt.datetime.now(dt.UTC),
        canonical_data(data or {}),
    )
    return NewEntry(
        chain=chain,
        digest=body_digest(chain, at, actor, action, object_type, object_id, text),
        at=at,
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        data=text,
    )


def append_cte(first: int, *, after: str | None = None) -> str:
    """SQL of two CTEs (``audit_head``, ``audit_entry``) that append one entry, its eight
    parameters numbered from ``first`` in ``NewEntry.params`` order. Advancing the head locks
    it until commit, so one chain's entries are strictly ordered; callers take it last.
    With ``after`` (an earlier CTE's name) the entry is written only if that CTE returned
    a row: the change it records happened."""
    c, d, at, actor, action, otype, oid, data = (f"${first + i}" for i in range(8))
    guard = f" AND EXISTS (SELECT 1 FROM {after})" if after else ""  # noqa: S608 - a CTE name
    return f"""
    audit_head AS (
        UPDATE audit_chains
        SET seq = seq + 1, prev_head = head, head = sha256(head || int8send(seq + 1) || {d})
        WHERE chain = {c}{guard} RETURNING seq, prev_head, head
    ),
    audit_entry AS (
        INSERT INTO audit_log
            (chain, seq, at, actor, action, object_type, object_id, data, prev_hash, hash)
        SELECT {c}, seq, {at}, {actor}, {action}, {otype}, {oid}, {data}, prev_head, head
        FROM audit_head
    )"""  # noqa: S608 - placeholders only


class VerifyResult(msgspec.Struct, frozen=True):
    ok: bool
    entries: int
    first_bad: ChainBreak | None


class AuditLog:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def append(
        self,
        conn: Connection,
        *,
        actor: str,
        action: str,
        object_type: str,
        object_id: str,
        data: dict[str, Any] | None = None,
    ) -> None:
        entry = new_entry(actor, action, object_type, object_id, data)
        await conn.execute(f"WITH {append_cte(1)} SELECT 1", *entry.params())

    async def verify(self) -> VerifyResult:
        total = 0
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            heads = {
                r["chain"]: (r["seq"], r["head"])
                for r in await conn.fetch("SELECT chain, seq, head FROM audit_chains")
            }
            for chain in range(CHAINS):
                rows = [
                    (
                        AuditEntry(
                            chain=r["chain"],
                            seq=r["seq"],
                            at=r["at"],
                            actor=r["actor"],
                            action=r["action"],
                            object_type=r["object_type"],
                            object_id=r["object_id"],
                            data=r["data"],
                        ),
                        bytes(r["prev_hash"]),
                        bytes(r["hash"]),
                    )
                    async for r in conn.cursor(
                        "SELECT * FROM audit_log WHERE chain = $1 ORDER BY seq", chain
                    )
                ]
                head_seq, head_hash = heads.get(chain, (0, b""))
                count, broken = verify_chain(chain, rows, head_seq, bytes(head_hash))
                total += count
                if broken is not None:
                    return VerifyResult(False, total, broken)
        return VerifyResult(True, total, None)
