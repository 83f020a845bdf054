"""SQL for "what each fund paid" over a set of settlements, shared by clearing and the fund
report: one row per (settlement, fund) with its amount, the personal account as fund
``acct``, read from the settlements' ``setldetail`` and ``acct_pay``."""

from __future__ import annotations


def fund_parts(source: str, *columns: str) -> str:
    """The body of a CTE over ``source`` (a table or CTE with ``setldetail``, ``acct_pay``
    and ``columns``): rows of (*columns, fund, amount). Names are the caller's constants."""
    cols = ", ".join(f"x.{c}" for c in columns)
    return f"""
        SELECT {cols}, d->>'fund_pay_type' AS fund, (d->>'fund_payamt')::bigint AS amount
        FROM {source} x, jsonb_array_elements(x.setldetail) AS d
        UNION ALL
        SELECT {cols}, 'acct', x.acct_pay FROM {source} x WHERE x.acct_pay > 0
    """  # noqa: S608 - identifiers are the callers' constants
