"""SQL over stored settlements shared by clearing, reconciliation and the fund report.

``fund_parts``: "what each fund paid" over a set of settlements, one row per (settlement,
fund) with its amount, the personal account as fund ``acct``, read from the settlements'
``setldetail`` and ``acct_pay``. Amounts are ``numeric``, and so are their sums: a sum
never overflows in SQL, and the caller checks its range where it becomes an integer.

``within_limits``: whether a stored settlement's amounts are ones the policy's amount
limits allow. The service cannot write any other since the limits exist, but rows stored
before them (or written by hand) can hold anything a bigint holds; every aggregate leaves
those out and names them, so one such row cannot stop the figures of everyone else.
"""

from __future__ import annotations

import functools

from cardsvc.settlement.params import POLICY_DIR, load_params


def fund_parts(source: str, *columns: str) -> str:
    """The body of a CTE over ``source`` (a table or CTE with ``setldetail``, ``acct_pay``
    and ``columns``): rows of (*columns, fund, amount). Names are the caller's constants."""
    cols = ", ".join(f"x.{c}" for c in columns)
    return f"""
        SELECT {cols}, d->>'fund_pay_type' AS fund, (d->>'fund_payamt')::numeric AS amount
        FROM {source} x, jsonb_array_elements(x.setldetail) AS d
        UNION ALL
        SELECT {cols}, 'acct', x.acct_pay::numeric FROM {source} x WHERE x.acct_pay > 0
    """  # noqa: S608 - identifiers are the callers' constants


def within_limits(alias: str, limit: str) -> str:
    """SQL, true for a settlement row (``alias``) whose amounts the limits allow: nothing
    negative, funds and account together within what was claimed (``psn_cash_pay >= 0``;
    the table's CHECKs tie the Step 3 fields together), the claim within ``limit`` (the
    placeholder bound to :func:`settlement_limit`)."""
    x = alias
    return (
        f"({x}.medfee_sumamt <= {limit} AND {x}.fund_pay_sumamt >= 0"
        f" AND {x}.acct_pay >= 0 AND {x}.psn_cash_pay >= 0)"
    )


# Clearing, reconciliation and the fund report name at most this many of the settlements
# they hold or leave out (their count says how many there are).
SETL_IDS_SHOWN = 100


def first_setl_ids() -> str:
    """SQL aggregate over settlement rows: the first ``SETL_IDS_SHOWN`` setl_ids, in order."""
    return f"(array_agg(setl_id ORDER BY setl_id))[1:{SETL_IDS_SHOWN}]"


@functools.cache
def settlement_limit() -> int:
    """The largest limit on one settlement's ``medfee_sumamt`` any policy version has, in
    fen (every policy file read once per process). Not the current policy's: a later
    policy that lowers the limit must not hold settlements that were legal when made."""
    return max(
        load_params(path.stem).amount_limits.settlement_total for path in POLICY_DIR.glob("*.json")
    )


# Where an aggregate becomes an integer it must fit the bigint columns and ledger amounts
# it is stored in.
BIGINT_MAX = 2**63 - 1


def fits_bigint(amount: int) -> bool:
    return -BIGINT_MAX <= amount <= BIGINT_MAX
