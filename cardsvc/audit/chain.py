"""The audit log's hash chains, pure.

Entries are spread over ``CHAINS`` independent chains (by the object they concern) so that
concurrent transactions seldom wait for one chain head. Within a chain, entry ``n`` stores
``hash = SHA-256(prev_hash ‖ int8(seq) ‖ SHA-256(canonical(entry without seq)))`` with
``prev_hash`` the hash of entry ``n-1`` (32 zero bytes for the first) and ``int8`` the
8-byte big-endian sequence number. Changing, removing or reordering any entry breaks the
chain from there on, and the chain head (last seq and hash) catches a cut-off tail.

The body digest is computed here; the chaining step is simple enough for PostgreSQL to do
in the same UPDATE that advances the chain head (``sha256(head || int8send(seq) || d)``),
so appending takes one statement and holds the head's lock only until commit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from typing import Any

import msgspec

CHAINS = 64
GENESIS = bytes(32)

_encoder = msgspec.json.Encoder(order="sorted")


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    chain: int
    seq: int
    at: dt.datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    data: str


class ChainBreak(msgspec.Struct, frozen=True):
    """Where a chain stops being trustworthy: ``seq`` is the first entry that does not match.

    When an anchor finds it (the chain is consistent in itself but no longer has the head an
    anchor recorded), any entry from ``seq`` to ``to_seq`` (the anchored head) may be the
    rewritten one: ``matched_anchor_at`` is the newest anchor that still matched, before
    ``seq``, and ``anchor_at`` the one that does not match.
    """

    chain: int
    seq: int
    reason: str
    to_seq: int | None = None
    anchor_at: dt.datetime | None = None
    matched_anchor_at: dt.datetime | None = None


def chain_of(object_type: str, object_id: str) -> int:
    digest = hashlib.sha256(f"{object_type}:{object_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % CHAINS


def canonical_data(data: dict[str, Any]) -> str:
    return _encoder.encode(data).decode()


def at_micros(at: dt.datetime) -> int:
    delta = at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def body_digest(
    chain: int,
    at: dt.datetime,
    actor: str,
    action: str,
    object_type: str,
    object_id: str,
    data: str,
) -> bytes:
    """SHA-256 of the entry's content: everything but its place (seq) in the chain."""
    body = _encoder.encode([chain, at_micros(at), actor, action, object_type, object_id, data])
    return hashlib.sha256(body).digest()


def chain_step(prev_hash: bytes, seq: int, digest: bytes) -> bytes:
    """The link: what PostgreSQL computes as ``sha256(head || int8send(seq) || digest)``."""
    return hashlib.sha256(prev_hash + seq.to_bytes(8, "big", signed=True) + digest).digest()


def entry_hash(prev_hash: bytes, entry: AuditEntry) -> bytes:
    digest = body_digest(
        entry.chain,
        entry.at,
        entry.actor,
        entry.action,
        entry.object_type,
        entry.object_id,
        entry.data,
    )
    return chain_step(prev_hash, entry.seq, digest)


def verify_chain(
    chain: int,
    rows: Iterable[tuple[AuditEntry, bytes, bytes]],
    head_seq: int,
    head_hash: bytes,
) -> tuple[int, ChainBreak | None]:
    """Walk one chain's (entry, prev_hash, hash) rows in seq order.

    Returns how many entries were read and the first break, if any.
    """
    expected_prev, expected_seq, count = GENESIS, 1, 0
    for entry, prev_hash, stored_hash in rows:
        count += 1
        if entry.seq != expected_seq:
            return count, ChainBreak(chain, expected_seq, "entry missing")
        if prev_hash != expected_prev:
            return count, ChainBreak(chain, entry.seq, "previous hash does not match")
        if entry_hash(prev_hash, entry) != stored_hash:
            return count, ChainBreak(chain, entry.seq, "entry hash does not match its content")
        expected_prev, expected_seq = stored_hash, expected_seq + 1
    if expected_seq - 1 != head_seq or expected_prev != head_hash:
        return count, ChainBreak(chain, expected_seq, "chain head does not match the last entry")
    return count, None
