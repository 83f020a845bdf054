"""The settlement's writes as one SQL statement.

A settlement is BEGIN, one read (``snapshot.read_for_settle``: the person's lock and
everything the policy needs), the pure policy in Python, this one write, COMMIT: four round
trips whatever the number of lines, funds or flags. Each part is a data-modifying CTE;
foreign keys between them are checked at the end of the statement, when every row exists.
The audit chain head is advanced last and only here, so it is locked only until commit and
always after the person: no two settlements can wait on each other in a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from cardsvc.audit.services import NewEntry, append_cte
from cardsvc.ledger.postings import Posting
from cardsvc.ledger.services import entry_columns
from cardsvc.settlement.snapshot import YEAR_COLUMNS
from cardsvc.settlement.supervision import Flag

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
    year: int
    year_delta: list[int]  # in YEAR_COLUMNS order
    flags: list[Flag]
    audit: NewEntry


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
    p = _Params()
    setl_id, psn_no = w.row["setl_id"], w.row["psn_no"]
    ctes = [
        f"ins_settlement AS (INSERT INTO settlements ({', '.join(w.row)})"
        f" VALUES ({p.many(list(w.row.values()))}))",
        f"ins_lines AS (INSERT INTO settlement_lines (setl_id, {_LINE_COLUMNS})"
        f" SELECT {p(setl_id)}, l.* FROM unnest("
        + ", ".join(p([ln[i] for ln in w.lines], f"::{t}[]") for i, t in enumerate(_LINE_TYPES))
        + ") AS l)",
    ]
    if w.postings:
        lines, accounts, sides, amounts = entry_columns(w.postings)
        ctes += [
            f"ins_txn AS (INSERT INTO ledger_txns (kind, ref) VALUES ('settlement', {p(setl_id)})"
            " RETURNING txn_id)",
            "ins_entries AS (INSERT INTO ledger_entries (txn_id, line, account, side, amount)"
            " SELECT ins_txn.txn_id, e.* FROM ins_txn, unnest("
            f"{p(lines, '::smallint[]')}, {p(accounts, '::text[]')},"
            f" {p(sides, '::text[]')}, {p(amounts, '::bigint[]')}) AS e)",
        ]
    if w.acct_pay:
        ctes.append(
            f"upd_account AS (UPDATE psn_accounts SET balance = balance - {p(w.acct_pay)}"
            f" WHERE psn_no = {p(psn_no)})"
        )
    if any(w.year_delta):
        ctes.append(
            f"upsert_year AS (INSERT INTO year_states (psn_no, year, {', '.join(YEAR_COLUMNS)})"
            f" VALUES ({p(psn_no)}, {p(w.year)}, {p.many(w.year_delta)})"
            " ON CONFLICT (psn_no, year) DO UPDATE SET "
            + ", ".join(f"{c} = year_states.{c} + EXCLUDED.{c}" for c in YEAR_COLUMNS)
            + ")"
        )
    if w.flags:
        ctes.append(
            "ins_flags AS (INSERT INTO supervision_flags"
            " (rule, setl_id, psn_no, fixmedins_code, details) SELECT r, "
            f"{p(setl_id)}, {p(psn_no)}, {p(w.row['fixmedins_code'])}, d::jsonb FROM unnest("
            f"{p([f.rule for f in w.flags], '::text[]')},"
            f" {p([_json.encode(f.details).decode() for f in w.flags], '::text[]')}) AS f(r, d))"
        )
    first = len(p.values) + 1
    p.values.extend(w.audit.params())
    ctes.append(append_cte(first))
    return "WITH " + ",\n".join(ctes) + "\nSELECT 1", p.values
