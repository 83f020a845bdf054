"""Money as people read and type it, pure: fen (the service's integers) and yuan, exactly
(integer arithmetic, never a float). Shared by the service (refusal messages, clearing
holds, docs/policy.md) and the terminal SDK (what a terminal shows and takes)."""

from __future__ import annotations

import re

FEN_PER_YUAN = 100
_YUAN = re.compile(r"(?P<yuan>[0-9]{1,11})(?:\.(?P<fen>[0-9]{1,2}))?")


def yuan(fen: int) -> str:
    """``123456`` → ``¥1,234.56``."""
    sign = "-" if fen < 0 else ""
    whole, part = divmod(abs(fen), FEN_PER_YUAN)
    return f"{sign}¥{whole:,}.{part:02d}"


def yuan_figure(fen: int) -> str:
    """``123456`` → ``1234.56``, ``-1`` → ``-0.01``: a figure for a file (no sign of the
    currency, no grouping comma, always 2 decimals), exact."""
    sign = "-" if fen < 0 else ""
    whole, part = divmod(abs(fen), FEN_PER_YUAN)
    return f"{sign}{whole}.{part:02d}"


def parse_yuan(text: str) -> int:
    """``12`` / ``12.5`` / ``12.05`` yuan → fen; at most 2 decimals.
    ``ValueError`` for anything else."""
    match = _YUAN.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an amount in yuan (like 12.00, at most 2 decimals)")
    return int(match["yuan"]) * FEN_PER_YUAN + int((match["fen"] or "0").ljust(2, "0"))
