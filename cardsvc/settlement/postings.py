"""The ledger entries of a settlement, pure.

Each fund pays its share and the personal account pays ``acct_pay``; together they are
owed to the facility. The cash the person pays at the desk never enters the fund's ledger.
"""

from __future__ import annotations

from cardsvc.ledger.postings import Posting, facility_account, fund_account, person_account
from cardsvc.settlement.policy import Split


def settlement_postings(psn_no: str, fixmedins_code: str, split: Split) -> list[Posting]:
    postings = [
        Posting(fund_account(f.fund_pay_type), "D", f.fund_payamt) for f in split.setldetail
    ]
    if split.acct_pay:
        postings.append(Posting(person_account(psn_no), "D", split.acct_pay))
    owed = split.fund_pay_sumamt + split.acct_pay
    if owed:
        postings.append(Posting(facility_account(fixmedins_code), "C", owed))
    return postings
