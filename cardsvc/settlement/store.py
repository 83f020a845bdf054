"""A batch of settlements written as one SQL statement: one round trip, one commit.

Each settlement's parts (the settlements row with its lines as one column, its ledger
transaction and entries, the account balance, the year state, supervision flags) are rows
of JSON documents that PostgreSQL turns into table rows (``json_populate_recordset``: the
columns' own types, so no cast list to keep in step); the request nonces go in with them and
one audit entry covers the whole batch. Foreign keys between the parts are checked at the
end of the statement, when every row exists.

All or nothing: ``locked`` takes every account row of the batch ``FOR UPDATE`` in psn_no
order, but only if it still has the version its snapshot read (a row changed and committed
meanwhile drops out) and nobody else holds it (``SKIP LOCKED``: a batch never waits for a
person's lock, so one account held by a long transaction cannot stall the worker's
settlements behind it). Unless every account passed, nothing at all is written and
``locked`` names those that did: the caller writes them again, and the others are settled
alone, each waiting for its person's lock in its own request. Account rows are locked in
psn_no order and the audit chain head last, so two batches never wait on each other in a
cycle.

A gateway settlement also marks the visit's lines it settles (``visit_lines``) with its
``setl_id``, in the same statement: each line is found by its TID and must still be the
version the handler read (its ``xmin``), active and unsettled, and not held by another
transaction (``SKIP LOCKED``: a 2205/2302/2601 changing the visit's lines holds them, or
another settlement of the visit is writing them). A settlement one of whose lines fails
that is named in ``lines_lost`` and nothing at all is written: it is refused (retryable),
the others are written again. So two settlements of one visit never both take a line, and a
line changed after the handler read it is never settled at its old figures.

A nonce seen before, an Idempotency-Key or a card token already used (by a request in
another worker at this instant) fails the whole statement with a unique violation: nothing
is written, and the caller settles those requests one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from cardsvc.audit.services import NewEntry, append_cte
from cardsvc.ledger.postings import Posting, check_balanced
from cardsvc.settlement import policy
from cardsvc.settlement.flags import Flag
from cardsvc.settlement.snapshot import YEAR_COLUMNS

_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class LineVersion:
    """A gateway visit line as read: where it is (``tid``, its ``ctid``) and which version
    (``xmin``), as PostgreSQL writes them in text."""

    tid: str
    xmin: str


@dataclass(frozen=True)
class SettlementWrite:
    row: dict[str, Any]  # column -> JSON value of the settlements row (lines included;
    #                      bytea columns as ``bytea(...)``)
    postings: list[Posting]
    acct_pay: int
    account_version: int  # the account row's xmin when the snapshot was read
    year: int
    year_delta: list[int]  # in YEAR_COLUMNS order
    flags: list[Flag]
    nonce: tuple[str, str] | None = None  # (terminal, nonce) of a request to admit here
    visit_lines: tuple[LineVersion, ...] = ()  # the gateway's visit lines it settles

    @property
    def psn_no(self) -> str:
        psn_no: str = self.row["psn_no"]
        return psn_no

    @property
    def setl_id(self) -> str:
        setl_id: str = self.row["setl_id"]
        return setl_id


def _charged(fee: policy.Line) -> dict[str, int]:
    """What a line charged: a native line's unit price (fen) and quantity, as ever; a
    decimal line's price (10^-4 fen) and count (10^-4 units)."""
    if isinstance(fee, policy.FeeLine):
        return {"unit_price": fee.unit_price, "quantity": fee.quantity}
    return {"price_e4": fee.price_e4, "count_e4": fee.count_e4}


def lines_column(
    split: policy.Split, fees: Sequence[policy.Line], refs: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The settlement's ``lines`` column: per fee line, what was charged and how Step 1
    split it (in fen). A native line keeps ``unit_price`` (fen) and ``quantity``; a
    gateway's decimal line ``price_e4`` (10^-4 fen) and ``count_e4`` (10^-4 units) and its
    ``feedetl_sn`` (``refs``): the link from the settlement to the visit's lines."""
    column = [
        {
            "line_no": n,
            "code": line.code,
            "chrgitm_lv": line.chrgitm_lv,
            **_charged(fee),
            "total": line.total,
            "overlmt_selfpay": line.over,
            "fulamt_ownpay_amt": line.fulamt_ownpay,
            "preselfpay_amt": line.preselfpay,
            "inscp_scp_amt": line.inscp,
        }
        for n, (line, fee) in enumerate(zip(split.lines, fees, strict=True), 1)
    ]
    for entry, ref in zip(column, refs, strict=False):
        entry["feedetl_sn"] = ref
    return column


def bytea(value: bytes) -> str:
    """JSON has no bytes: PostgreSQL reads ``\\x``-hex as bytea."""
    return "\\x" + value.hex()


def _doc(rows: list[dict[str, Any]]) -> str:
    return _json.encode(rows).decode()


def settlement_statement(writes: list[SettlementWrite], audit: NewEntry) -> tuple[str, list[Any]]:
    """The batch's write; its one row says ``ok`` (all written), ``locked`` (the accounts
    that still had their snapshot's version) and ``lines_lost`` (the settlements one of
    whose visit lines changed or was held)."""
    if not writes or len({w.psn_no for w in writes}) != len(writes):
        raise ValueError("a batch holds at most one settlement per person, and one at least")
    columns = list(writes[0].row)
    accounts = [
        {"psn_no": w.psn_no, "pay": w.acct_pay, "version": str(w.account_version)} for w in writes
    ]
    nonces = [{"terminal_id": t, "nonce": n} for w in writes if w.nonce for t, n in [w.nonce]]
    txns, entries = [], []
    for w in writes:
        if w.postings:
            check_balanced(w.postings)
            txns.append({"ref": w.setl_id})
            entries += [
                {
                    "ref": w.setl_id,
                    "line": n,
                    "account": p.account,
                    "side": p.side,
                    "amount": p.amount,
                }
                for n, p in enumerate(w.postings, 1)
            ]
    years = [
        {"psn_no": w.psn_no, "year": w.year, **dict(zip(YEAR_COLUMNS, w.year_delta, strict=True))}
        for w in writes
        if any(w.year_delta)
    ]
    flags = [
        {
            "rule": f.rule,
            "setl_id": w.setl_id,
            "psn_no": w.psn_no,
            "fixmedins_code": w.row["fixmedins_code"],
            "details": f.details,
        }
        for w in writes
        for f in w.flags
    ]
    visit_lines = [
        {"setl_id": w.setl_id, "tid": v.tid, "xmin": v.xmin} for w in writes for v in w.visit_lines
    ]
    cols = ", ".join(columns)
    years_cols = ", ".join(YEAR_COLUMNS)
    audit_params = audit.params()
    # The batch's persons again, as an array: the planner guesses any JSON input at 100 rows
    # and, on a city of a few thousand accounts, would scan psn_accounts to hash-join them
    # (measured at 10,000 persons: 10,000 rows read twice per batch, PostgreSQL's CPU per
    # settlement doubled); "= ANY(array)" it guesses at 10, and probes the key.
    persons = f"${9 + len(audit_params)}::text[]"
    # The lines' TIDs as an array too: a TID scan, whatever the table's size (and none at
    # all for a batch of native settlements).
    tids = f"${10 + len(audit_params)}::text[]::tid[]"
    lines_doc = f"${11 + len(audit_params)}::json"
    # Only a batch with gateway settlements has the lines' part: a batch of native ones runs
    # the statement without it (measured: the longer statement, whose lines part does
    # nothing for them, cost 0.5-1 ms more of PostgreSQL's CPU per native settlement).
    lines_ctes = (
        f"""visit_lines AS (
    SELECT * FROM json_to_recordset({lines_doc}) AS v(setl_id text, tid text, xmin text)
),
lines_locked AS (
    SELECT l.ctid AS tid, v.setl_id FROM gateway_visit_lines l JOIN visit_lines v
        ON l.ctid = v.tid::tid
    WHERE l.ctid = ANY({tids}) AND l.xmin = v.xmin::xid
      AND l.status = 'active' AND l.setl_id IS NULL
    FOR UPDATE OF l SKIP LOCKED
),
lines_lost AS (
    SELECT v.setl_id FROM visit_lines v GROUP BY v.setl_id
    HAVING count(*) > (SELECT count(*) FROM lines_locked k WHERE k.setl_id = v.setl_id)
),
guard AS (
    SELECT count(*) = $2 AND NOT EXISTS (SELECT 1 FROM lines_lost) AS ok FROM locked
),
upd_lines AS (
    UPDATE gateway_visit_lines l SET setl_id = k.setl_id FROM lines_locked k
    WHERE l.ctid = ANY({tids}) AND l.ctid = k.tid AND (SELECT ok FROM guard)
    RETURNING 1
),"""
        if visit_lines
        else "guard AS (SELECT count(*) = $2 AS ok FROM locked),"
    )
    lines_done = " AND (SELECT count(*) FROM upd_lines) >= 0" if visit_lines else ""
    lines_lost = "ARRAY(SELECT setl_id FROM lines_lost)" if visit_lines else "'{}'::text[]"
    sql = f"""
WITH accounts AS (
    SELECT * FROM json_to_recordset($1::json) AS i(psn_no text, pay bigint, version text)
),
locked AS (
    SELECT a.psn_no FROM psn_accounts a JOIN accounts i USING (psn_no)
    WHERE a.psn_no = ANY({persons}) AND a.xmin = i.version::xid
    ORDER BY a.psn_no FOR UPDATE OF a SKIP LOCKED
),
{lines_ctes}
ins_nonces AS (
    INSERT INTO request_nonces (terminal_id, nonce)
    SELECT terminal_id, nonce FROM json_to_recordset($3::json) AS x(terminal_id text, nonce text)
    WHERE (SELECT ok FROM guard) RETURNING 1
),
upd_account AS (
    UPDATE psn_accounts a SET balance = a.balance - i.pay FROM accounts i
    WHERE a.psn_no = i.psn_no AND a.psn_no = ANY({persons}) AND (SELECT ok FROM guard)
    RETURNING a.psn_no
),
ins_settlements AS (
    INSERT INTO settlements ({cols})
    SELECT {cols} FROM json_populate_recordset(NULL::settlements, $4::json)
    WHERE (SELECT ok FROM guard) RETURNING 1
),
ins_txns AS (
    INSERT INTO ledger_txns (kind, ref)
    SELECT 'settlement', ref FROM json_to_recordset($5::json) AS t(ref text)
    WHERE (SELECT ok FROM guard) RETURNING txn_id, ref
),
ins_entries AS (
    INSERT INTO ledger_entries (txn_id, line, account, side, amount)
    SELECT t.txn_id, e.line, e.account, e.side, e.amount
    FROM ins_txns t JOIN json_to_recordset($6::json)
        AS e(ref text, line smallint, account text, side text, amount bigint) USING (ref)
    RETURNING 1
),
upsert_years AS (
    INSERT INTO year_states (psn_no, year, {years_cols})
    SELECT psn_no, year, {years_cols} FROM json_populate_recordset(NULL::year_states, $7::json)
    WHERE (SELECT ok FROM guard)
    ON CONFLICT (psn_no, year) DO UPDATE SET
    {", ".join(f"{c} = year_states.{c} + EXCLUDED.{c}" for c in YEAR_COLUMNS)}
    RETURNING 1
),
ins_flags AS (
    INSERT INTO supervision_flags (rule, setl_id, psn_no, fixmedins_code, details)
    SELECT rule, setl_id, psn_no, fixmedins_code, details
    FROM json_populate_recordset(NULL::supervision_flags, $8::json)
    WHERE (SELECT ok FROM guard) RETURNING 1
),
-- Everything else first: the chain head is locked only once every row of the batch is
-- in (and every unique-index wait is over), so it is held for as short as can be.
done AS (
    SELECT 1 FROM upd_account
    WHERE (SELECT count(*) FROM ins_nonces) >= 0 AND (SELECT count(*) FROM ins_settlements) >= 0
      AND (SELECT count(*) FROM ins_entries) >= 0 AND (SELECT count(*) FROM upsert_years) >= 0
      AND (SELECT count(*) FROM ins_flags) >= 0{lines_done}
    LIMIT 1
),
{append_cte(9, after="done").strip()}
SELECT (SELECT ok FROM guard) AS ok, ARRAY(SELECT psn_no FROM locked) AS locked,
       {lines_lost} AS lines_lost"""
    return sql, [
        _doc(accounts),
        len(writes),
        _doc(nonces),
        _doc([w.row for w in writes]),
        _doc(txns),
        _doc(entries),
        _doc(years),
        _doc(flags),
        *audit_params,
        [w.psn_no for w in writes],
        *([[line["tid"] for line in visit_lines], _doc(visit_lines)] if visit_lines else []),
    ]
