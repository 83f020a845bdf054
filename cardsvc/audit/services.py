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
    canonical_data,
    chain_of,
    entry_hash,
    verify_chain,
)
from cardsvc.db import Connection, Pool


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
        chain = chain_of(object_type, object_id)
        # Locks this chain's head until commit: entries of one chain are strictly ordered.
        head = await conn.fetchrow(
            "UPDATE audit_chains SET seq = seq + 1 WHERE chain = $1 RETURNING seq, head", chain
        )
        entry = AuditEntry(
            chain=chain,
            seq=head["seq"],
            at=dt.datetime.now(dt.UTC),
            actor=actor,
            action=action,
            object_type=object_type,
            object_id=object_id,
            data=canonical_data(data or {}),
        )
        digest = entry_hash(head["head"], entry)
        await conn.execute(
            """
            WITH appended AS (
                INSERT INTO audit_log
                    (chain, seq, at, actor, action, object_type, object_id, data, prev_hash, hash)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
            )
            UPDATE audit_chains SET head = $10 WHERE chain = $1
            """,
            chain,
            entry.seq,
            entry.at,
            actor,
            action,
            object_type,
            object_id,
            entry.data,
            head["head"],
            digest,
        )

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
