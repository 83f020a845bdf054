"""Double-entry postings, pure.

Account names: ``person:<psn_no>`` (the fund's liability to a person's account, credit
normal), ``contrib:personal_account`` (contributions assigned to personal accounts), and
the fund, facility and clearing accounts the settlement engine adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

Side = Literal["D", "C"]
CONTRIB_PERSONAL_ACCOUNT = "contrib:personal_account"


class UnbalancedPosting(ValueError):
    """Debits and credits of one ledger transaction differ."""


class Posting(msgspec.Struct, frozen=True):
    account: str
    side: Side
    amount: int


def person_account(psn_no: str) -> str:
    return f"person:{psn_no}"


def check_balanced(postings: Sequence[Posting]) -> None:
    if not postings:
        raise UnbalancedPosting("a ledger transaction needs entries")
    if any(p.amount <= 0 for p in postings):
        raise UnbalancedPosting("entry amounts must be positive")
    debits = sum(p.amount for p in postings if p.side == "D")
    credits = sum(p.amount for p in postings if p.side == "C")
    if debits != credits:
        raise UnbalancedPosting(f"debits {debits} != credits {credits}")
