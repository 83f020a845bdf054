"""Double-entry postings, pure.

Account names:
- ``person:<psn_no>``: the personal account, a liability to the person (credit normal);
- ``contrib:personal_account``: contributions assigned to personal accounts;
- ``fund:<fund_pay_type>``: a fund pool's spending (debited when it pays a claim);
- ``facility:<fixmedins_code>``: what is owed to a facility (credited by settlements,
  debited by clearing);
- ``clearing:bank``: money paid out to facilities by clearing runs.
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


CLEARING_BANK = "clearing:bank"


def person_account(psn_no: str) -> str:
    return f"person:{psn_no}"


def fund_account(fund_pay_type: str) -> str:
    return f"fund:{fund_pay_type}"


def facility_account(fixmedins_code: str) -> str:
    return f"facility:{fixmedins_code}"


def reversed_postings(postings: Sequence[Posting]) -> list[Posting]:
    """The entries that undo ``postings`` exactly: same accounts and amounts, sides swapped."""
    return [Posting(p.account, "C" if p.side == "D" else "D", p.amount) for p in postings]


def check_balanced(postings: Sequence[Posting]) -> None:
    if not postings:
        raise UnbalancedPosting("a ledger transaction needs entries")
    if any(p.amount <= 0 for p in postings):
        raise UnbalancedPosting("entry amounts must be positive")
    debits = sum(p.amount for p in postings if p.side == "D")
    credits = sum(p.amount for p in postings if p.side == "C")
    if debits != credits:
        raise UnbalancedPosting(f"debits {debits} != credits {credits}")
