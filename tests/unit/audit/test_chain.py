from __future__ import annotations

import datetime as dt

import msgspec

from cardsvc.audit.chain import GENESIS, AuditEntry, ChainBreak, entry_hash, verify_chain

AT = dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.UTC)


def _chain(n: int) -> list[tuple[AuditEntry, bytes, bytes]]:
    rows, prev = [], GENESIS
    for seq in range(1, n + 1):
        entry = AuditEntry(
            chain=3,
            seq=seq,
            at=AT + dt.timedelta(microseconds=seq),
            actor="admin",
            action="x",
            object_type="card",
            object_id=f"A{seq:08d}",
            data='{"k":1}',
        )
        digest = entry_hash(prev, entry)
        rows.append((entry, prev, digest))
        prev = digest
    return rows


def test_intact_chain_verifies():
    rows = _chain(5)
    assert verify_chain(3, rows, 5, rows[-1][2]) == (5, None)
    assert verify_chain(3, [], 0, GENESIS) == (0, None)


def test_changed_content_is_named():
    rows = _chain(5)
    entry, prev, digest = rows[2]
    rows[2] = (msgspec.structs.replace(entry, data='{"k":2}'), prev, digest)
    _, broken = verify_chain(3, rows, 5, rows[-1][2])
    assert broken == ChainBreak(3, 3, "entry hash does not match its content")


def test_changed_time_is_named():
    rows = _chain(3)
    entry, prev, digest = rows[0]
    rows[0] = (msgspec.structs.replace(entry, at=AT), prev, digest)
    assert verify_chain(3, rows, 3, rows[-1][2])[1] == ChainBreak(
        3, 1, "entry hash does not match its content"
    )


def test_removed_entry_is_named():
    rows = _chain(5)
    del rows[1]
    assert verify_chain(3, rows, 5, rows[-1][2])[1] == ChainBreak(3, 2, "entry missing")


def test_cut_tail_is_caught_by_the_head():
    rows = _chain(5)
    head = rows[-1][2]
    assert verify_chain(3, rows[:4], 5, head)[1] == ChainBreak(
        3, 5, "chain head does not match the last entry"
    )


def test_rehashed_forgery_breaks_the_link_to_the_next_entry():
    rows = _chain(4)
    entry, prev, _ = rows[1]
    forged = msgspec.structs.replace(entry, actor="mallory")
    rows[1] = (forged, prev, entry_hash(prev, forged))
    assert verify_chain(3, rows, 4, rows[-1][2])[1] == ChainBreak(
        3, 3, "previous hash does not match"
    )
