"""Audit anchors, pure: the MACed message, the JSON line, and checking a chain against them."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from cardsvc.audit.anchors import (
    Anchor,
    AnchoredHead,
    AnchoredHeads,
    AnchorUnreadable,
    ChainHead,
    first_anchor_mismatch,
    message,
    parse_line,
)
from cardsvc.audit.chain import CHAINS, GENESIS

AT = dt.datetime(2026, 11, 30, 21, 0, 0, 123456, tzinfo=dt.UTC)
T1, T2, T3 = (AT + dt.timedelta(minutes=i) for i in (1, 2, 3))


def heads(**seqs: int) -> tuple[ChainHead, ...]:
    """Every chain at seq 0 (genesis) except those given as ``c<n>=seq``."""
    return tuple(
        ChainHead(c, seqs.get(f"c{c}", 0), bytes([c]) * 32 if f"c{c}" in seqs else GENESIS)
        for c in range(CHAINS)
    )


def test_message_layout_is_tag_time_and_every_head() -> None:
    signed = message(AT, heads(c5=7))
    assert signed.startswith(b"cardsvc audit anchor v1\n")
    assert len(signed) == 24 + 8 + CHAINS * (2 + 8 + 32)
    micros = int(signed[24:32].hex(), 16)
    assert dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros) == AT
    fifth = signed[32 + 5 * 42 : 32 + 6 * 42]
    assert fifth == (5).to_bytes(2, "big") + (7).to_bytes(8, "big") + bytes([5]) * 32


def test_message_needs_every_chain_in_order() -> None:
    with pytest.raises(ValueError, match=r"chains 0\.\.63"):
        message(AT, heads()[1:])
    with pytest.raises(ValueError, match=r"chains 0\.\.63"):
        message(AT, tuple(reversed(heads())))


def test_line_round_trip_gives_the_same_anchor_and_message() -> None:
    anchor = Anchor(AT, heads(c0=3, c63=9), bytes(range(16)))
    parsed, signed = parse_line(anchor.line())
    assert parsed == anchor and signed == message(AT, anchor.heads)
    assert anchor.entries() == 12
    assert "\n" not in anchor.line()


def _line(**changes: object) -> str:
    document = json.loads(Anchor(AT, heads(c1=1), bytes(16)).line())
    document.update(changes)
    return json.dumps(document)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("{not json", id="not json"),
        pytest.param(_line(v=2), id="other version"),
        pytest.param(_line(mac="00" * 15), id="short mac"),
        pytest.param(_line(mac="ZZ" * 16), id="mac not hex"),
        pytest.param(_line(at="2026-11-30T21:00:00"), id="time without zone"),
        pytest.param(_line(heads=[[0, 0, "00" * 32]]), id="one chain only"),
        pytest.param(_line(heads=[[64, 0, "00" * 32]] * 64), id="chain out of range"),
        pytest.param(_line(extra=1), id="unknown field"),
    ],
)
def test_unreadable_lines_are_refused(text: str) -> None:
    with pytest.raises(AnchorUnreadable):
        parse_line(text)


H = {seq: bytes([seq]) * 32 for seq in range(1, 11)}  # the chain's stored hashes by seq


def anchored(*marks: tuple[int, bytes, dt.datetime]) -> list[AnchoredHead]:
    return [AnchoredHead(seq, head, at) for seq, head, at in marks]


@pytest.mark.parametrize(
    ("length", "marks", "expected"),
    [
        pytest.param(10, [], None, id="no anchors"),
        pytest.param(10, [(0, GENESIS, T1), (4, H[4], T2), (10, H[10], T3)], None, id="all match"),
        pytest.param(
            10,
            [(4, H[4], T1), (8, b"x" * 32, T2)],
            (5, 8, T2, T1, "entries do not match the anchored chain head"),
            id="rewritten between two anchors",
        ),
        pytest.param(
            10,
            [(3, b"x" * 32, T1)],
            (1, 3, T1, None, "entries do not match the anchored chain head"),
            id="rewritten before the first anchor",
        ),
        pytest.param(
            6,
            [(4, H[4], T1), (9, H[9], T2)],
            (7, 9, T2, T1, "entry missing: an anchor recorded the chain up to a later entry"),
            id="tail cut off and head rewound",
        ),
    ],
)
def test_first_anchor_mismatch(
    length: int,
    marks: list[tuple[int, bytes, dt.datetime]],
    expected: tuple[int, int, dt.datetime, dt.datetime | None, str] | None,
) -> None:
    hashes = {seq: h for seq, h in H.items() if seq <= length}
    found = first_anchor_mismatch(7, length, hashes, anchored(*marks))
    if expected is None:
        assert found is None
        return
    assert found is not None
    seq, to_seq, anchor_at, matched_at, reason = expected
    assert (found.chain, found.seq, found.to_seq, found.anchor_at) == (7, seq, to_seq, anchor_at)
    assert (found.matched_anchor_at, found.reason) == (matched_at, reason)


def test_anchored_heads_keep_each_distinct_head_once() -> None:
    collected = AnchoredHeads()
    for at in (T2, T1, T3):  # chain 2 idle at seq 4: one head, its earliest anchor
        collected.add(Anchor(at, heads(c2=4), bytes(16)))
    assert collected.anchors == 3 and collected.last_at == T3
    assert collected.of_chain(2) == [AnchoredHead(4, bytes([2]) * 32, T1)]
    assert collected.of_chain(0) == [AnchoredHead(0, GENESIS, T1)]
