"""The settlement's writes as one SQL statement.

A settlement is one read (``snapshot.read_for_settle``: everything the policy needs and the
account's row version), the pure policy in Python, and this one write, which is also its own
transaction: two round trips whatever the number of lines, funds or flags, and no lock held
while the service computes. Each part is a data-modifying CTE; foreign keys between them are
checked at the end of the statement, when every row exists. The account row is written
first and the audit chain head last, so a statement holds the person before the chain and
no two settlements can wait on each other in a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from cardsvc.audit.services import NewEntry, append_cte
from cardsvc.ledger.postings import Posting
from cardsvc.ledger.services import entry_columns
from cardsvc.settlement.flags import Flag
from cardsvc.settlement.snapshot import YEAR_COLUMNS
from cardsvc.terminals.admission import NONCE_FRESH, nonce_cte

_json = msgspec.json.Encoder()


@dataclass
class _Params:
    """Collects parameter values and hands out their ``$n`` placeholders."""

    values: list[Any] = field(default_factory=list)

    def __call__(self, value: Any, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{cast}"

    def many(self, values: list[Any]) -> str:
        return ", ".join(self(v) for v in values)


@dataclass(frozen=True)
class SettlementWrite:
    row: dict[str, Any]  # column -> value of the settlements row
    lines: list[tuple[Any, ...]]  # (line_no, code, chrgitm_lv, unit_price, quantity, total,
    #                                 overlmt_selfpay, fulamt_ownpay_amt, preselfpay_amt, inscp)
    postings: list[Posting]
    acct_pay: int
    account_version: int  # the account row's xmin when the snapshot was read
    year: int
    year_delta: list[int]  # in YEAR_COLUMNS order
    flags: list[Flag]
    audit: NewEntry
    nonce: tuple[str, str] | None = None  # (terminal, nonce) of a request to admit here


_LINE_TYPES = (
    "smallint",
    "text",
    "text",
    "bigint",
    "int",
    "bigint",
    "bigint",
    "bigint",
    "bigint",
    "bigint",
)
_LINE_COLUMNS = (
    "line_no, code, chrgitm_lv, unit_price, quantity, total, overlmt_selfpay,"
    " fulamt_ownpay_amt, preselfpay_amt, inscp_scp_amt"
)


def settlement_statement(w: SettlementWrite) -> tuple[str, list[Any]]:
    """The whole write, guarded by the account's row version read with the snapshot.

    ``upd_account`` updates the person's account only if its ``xmin`` (the id of the
    transaction that last wrote the row: every settlement, reversal and credit does) is
    still the one the snapshot saw; every other part selects from it, so when the account
    changed in between nothing is written and ``written`` is false; with ``nonce``, a
    replayed request writes nothing either and ``fresh`` is false. Under READ
    COMMITTED the UPDATE waits for a concurrent writer of the row and then re-checks the
    version against the committed row, so two writers of one person can never both pass."""
    p = _Params()
    setl_id, psn_no = w.row["setl_id"], w.row["psn_no"]
    ctes, guard = [], ""
    if w.nonce is not None:
        # The request's nonce is recorded here; a replayed one writes nothing at all.
        ctes.append(nonce_cte(p(w.nonce[0]), p(w.nonce[1])).strip())
        guard = " AND EXISTS (SELECT 1 FROM admission_nonce)"
    ctes += [
        f"upd_account AS (UPDATE psn_accounts SET balance = balance - {p(w.acct_pay)}"
        f" WHERE psn_no = {p(psn_no)} AND xmin = {p(w.account_version, '::xid')}{guard}"
        " RETURNING psn_no)",
        f"ins_settlement AS (INSERT INTO settlements ({', '.join(w.row)})"
        f" SELECT {p.many(list(w.row.values()))} FROM upd_account)",
        f"ins_lines AS (INSERT INTO settlement_lines (setl_id, {_LINE_COLUMNS})"
        f" SELECT {p(setl_id)}, l.* FROM upd_account, unnest("
        + ", ".join(p([ln[i] for ln in w.lines], f"::{t}[]") for i, t in enumerate(_LINE_TYPES))
        + ") AS l)",
    ]
    if w.postings:
        lines, accounts, sides, amounts = entry_columns(w.postings)
        ctes += [
            "ins_txn AS (INSERT INTO ledger_txns (kind, ref)"
            f" SELECT 'settlement', {p(setl_id)} FROM upd_account RETURNING txn_id)",
            "ins_entries AS (INSERT INTO ledger_entries (txn_id, line, account, side, amount)"
            " SELECT ins_txn.txn_id, e.* FROM ins_txn, unnest("
            f"{p(lines, '::smallint[]')}, {p(accounts, '::text[]')},"
            f" {p(sides, '::text[]')}, {p(amounts, '::bigint[]')}) AS e)",
        ]
    if any(w.year_delta):
        ctes.append(
            f"upsert_year AS (INSERT INTO year_states (psn_no, year, {', '.join(YEAR_COLUMNS)})"
            f" SELECT psn_no, {p(w.year)}, {p.many(w.year_delta)} FROM upd_account"
            " ON CONFLICT (psn_no, year) DO UPDATE SET "
            + ", ".join(f"{c} = year_states.{c} + EXCLUDED.{c}" for c in YEAR_COLUMNS)
            + ")"
        )
    if w.flags:
        ctes.append(
            "ins_flags AS (INSERT INTO supervision_flags"
            " (rule, setl_id, psn_no, fixmedins_code, details) SELECT r, "
            f"{p(setl_id)}, psn_no, {p(w.row['fixmedins_code'])}, d::jsonb"
            " FROM upd_account, unnest("
            f"{p([f.rule for f in w.flags], '::text[]')},"
            f" {p([_json.encode(f.details).decode() for f in w.flags], '::text[]')}) AS f(r, d))"
        )
    first = len(p.values) + 1
    p.values.extend(w.audit.params())
    ctes.append(append_cte(first, after="upd_account"))
    fresh = NONCE_FRESH if w.nonce else "true"
    return (
        "WITH " + ",\n".join(ctes) + f"\nSELECT {fresh} AS fresh,"
        " (SELECT count(*) FROM upd_account) > 0 AS written",
        p.values,
    )
