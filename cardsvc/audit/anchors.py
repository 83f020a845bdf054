"""Audit anchors, pure: every chain's head at one moment, MACed by the HSM.

The chains alone prove nothing against someone who can write to the database: they can
rewrite an entry and recompute every hash after it and the head. An anchor records each
chain's head ``(seq, hash)`` and carries the HSM's SM4-CMAC over them under a key that never
leaves the HSM, and a copy of it is kept outside the database. Because a head's hash covers
every entry before it, one genuine anchor pins the whole prefix of every chain: a rewritten,
removed or reordered entry at or before an anchored seq changes the hash there.

The MAC covers ``message()``::

    "cardsvc audit anchor v1\\n" ‖ int8(at, µs since the epoch)
    ‖ for chain 0 … 63: int2(chain) ‖ int8(seq) ‖ head (32 bytes)

(big-endian). An anchor is kept as one JSON line, the same in the export file and the
database::

    {"v":1,"at":"2026-11-30T21:00:00.123456Z","heads":[[0,12,"<hex>"],…],"mac":"<hex>"}
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

import msgspec

from cardsvc.audit.chain import CHAINS, ChainBreak, at_micros

ANCHOR_VERSION: Literal[1] = 1
MAC_LEN = 16
_PREFIX = b"cardsvc audit anchor v1\n"
_HASH_LEN = 32

Chain = Annotated[int, msgspec.Meta(ge=0, lt=CHAINS)]
Seq = Annotated[int, msgspec.Meta(ge=0)]
HashHex = Annotated[str, msgspec.Meta(pattern=f"^[0-9a-f]{{{2 * _HASH_LEN}}}$")]
MacHex = Annotated[str, msgspec.Meta(pattern=f"^[0-9a-f]{{{2 * MAC_LEN}}}$")]


class AnchorUnreadable(ValueError):
    """A line that is not an anchor of this format."""


class ChainHead(msgspec.Struct, frozen=True):
    chain: int
    seq: int
    head: bytes


class _Line(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    v: Literal[1]
    at: Annotated[dt.datetime, msgspec.Meta(tz=True)]
    heads: list[tuple[Chain, Seq, HashHex]]
    mac: MacHex


_line_decoder = msgspec.json.Decoder(_Line)
_line_encoder = msgspec.json.Encoder()


class Anchor(msgspec.Struct, frozen=True):
    at: dt.datetime
    heads: tuple[ChainHead, ...]  # every chain, in chain order
    mac: bytes

    def line(self) -> str:
        """The anchor as one JSON line (no newline)."""
        heads = [(h.chain, h.seq, h.head.hex()) for h in self.heads]
        return _line_encoder.encode(_Line(ANCHOR_VERSION, self.at, heads, self.mac.hex())).decode()

    def entries(self) -> int:
        """How many entries the anchor covers."""
        return sum(head.seq for head in self.heads)


def message(at: dt.datetime, heads: Sequence[ChainHead]) -> bytes:
    """The bytes the HSM MACs: the format tag, the time, and every chain's head."""
    if [h.chain for h in heads] != list(range(CHAINS)):
        raise ValueError(f"an anchor has the heads of chains 0..{CHAINS - 1}, in order")
    parts = [_PREFIX, at_micros(at).to_bytes(8, "big", signed=True)]
    for h in heads:
        if len(h.head) != _HASH_LEN:
            raise ValueError("a chain head is 32 bytes")
        parts.append(h.chain.to_bytes(2, "big") + h.seq.to_bytes(8, "big") + h.head)
    return b"".join(parts)


def parse_line(text: str | bytes) -> tuple[Anchor, bytes]:
    """An anchor from its JSON line, with the message its MAC must cover."""
    try:
        line = _line_decoder.decode(text)
    except msgspec.DecodeError as exc:
        raise AnchorUnreadable(f"not an audit anchor: {exc}") from None
    heads = tuple(ChainHead(c, s, bytes.fromhex(h)) for c, s, h in line.heads)
    try:
        signed = message(line.at, heads)
    except ValueError as exc:
        raise AnchorUnreadable(f"not an audit anchor: {exc}") from None
    return Anchor(line.at, heads, bytes.fromhex(line.mac)), signed


# --- checking the chains against anchors -----------------------------------------------------


class AnchoredHead(msgspec.Struct, frozen=True, order=True):
    seq: int
    head: bytes
    at: dt.datetime


class AnchoredHeads:
    """The distinct heads a set of genuine anchors recorded, per chain; fed one anchor at a
    time so that verification holds one entry per anchored head, not every anchor."""

    def __init__(self) -> None:
        self._seen: dict[int, dict[tuple[int, bytes], dt.datetime]] = {
            chain: {} for chain in range(CHAINS)
        }
        self.anchors = 0
        self.last_at: dt.datetime | None = None

    def add(self, anchor: Anchor) -> None:
        self.anchors += 1
        if self.last_at is None or anchor.at > self.last_at:
            self.last_at = anchor.at
        for h in anchor.heads:
            seen = self._seen[h.chain]
            known = seen.get((h.seq, h.head))
            if known is None or anchor.at < known:
                seen[(h.seq, h.head)] = anchor.at

    def of_chain(self, chain: int) -> list[AnchoredHead]:
        """The chain's anchored heads in seq order (each with the earliest anchor of it)."""
        return sorted(AnchoredHead(seq, head, at) for (seq, head), at in self._seen[chain].items())


def first_anchor_mismatch(
    chain: int,
    length: int,
    hashes: Mapping[int, bytes],
    anchored: Sequence[AnchoredHead],
) -> ChainBreak | None:
    """The first anchored head the chain no longer has.

    ``length`` is how many entries of the chain are consistent in themselves and ``hashes``
    their stored hashes by seq (at least at the anchored seqs up to ``length``); ``anchored``
    is the chain's anchored heads in seq order. An anchor beyond ``length`` means entries
    are missing from ``length + 1`` on.
    """
    matched_seq, matched_at = 0, None
    for anchored_head in anchored:
        seq = anchored_head.seq
        if seq > length:
            return ChainBreak(
                chain,
                length + 1,
                "entry missing: an anchor recorded the chain up to a later entry",
                to_seq=seq,
                anchor_at=anchored_head.at,
                matched_anchor_at=matched_at,
            )
        if seq > 0 and hashes.get(seq) != anchored_head.head:
            return ChainBreak(
                chain,
                matched_seq + 1,
                "entries do not match the anchored chain head",
                to_seq=seq,
                anchor_at=anchored_head.at,
                matched_anchor_at=matched_at,
            )
        matched_seq, matched_at = seq, anchored_head.at
    return None
