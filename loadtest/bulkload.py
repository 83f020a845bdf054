"""Persons, enrolments, funded accounts, cards and injury cases by COPY, in batches.

Rows are exactly what the service writes: ``certno_hash`` / ``certno_enc`` /
``certno_masked`` from ``DataProtector`` under the service's data key, ``psn_no`` and
``card_no`` in the service's formats (its sequences are advanced past them afterwards).
Each batch's account balances are backed by one ledger transaction of kind
``account_credit`` (debit ``contrib:personal_account``, credit each ``person:<psn_no>``)
and ``account_credits`` rows, as ``POST /v1/accounts/credits`` books them, so the ledger
proof holds. One batch is one database transaction; batches are built in a worker process
while the previous one is copied, so Python and PostgreSQL work at the same time.

Not written: audit entries (a bulk import is not a sequence of admin actions; the audit
chains stay valid because nothing is appended to them).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import asyncpg
import msgspec
from tqdm import tqdm

from cardsvc.cards.records import expiry_for
from cardsvc.ledger.postings import CONTRIB_PERSONAL_ACCOUNT, person_account
from cardsvc.persons.certno import mask
from cardsvc.privacy import DataProtector
from loadtest import population
from loadtest.state import City

# ledger_entries.line is a smallint: one credit transaction holds at most 32,766 persons.
MAX_BATCH = 30_000
_BEGIN = dt.date(2020, 1, 1)
_CASE_FROM, _CASE_TO = dt.date(2024, 1, 1), dt.date(2030, 12, 31)

_COLUMNS = {
    "persons": (
        "psn_no",
        "certno_hash",
        "certno_enc",
        "certno_masked",
        "psn_name",
        "gend",
        "birth_year",
        "admdvs",
        "psn_type",
    ),
    "psn_accounts": ("psn_no", "balance"),
    "insurances": ("psn_no", "insutype", "begndate"),
    "cards": (
        "card_no",
        "card_sn",
        "psn_no",
        "admdvs",
        "status",
        "issue_date",
        "expiry_date",
        "issued_by",
    ),
    "injury_cases": (
        "case_id",
        "psn_no",
        "employer",
        "injury_date",
        "valid_from",
        "valid_to",
        "status",
    ),
    "ledger_txns": ("txn_id", "kind", "ref"),
    "ledger_entries": ("txn_id", "line", "account", "side", "amount"),
    "account_credits": ("ref", "psn_no", "amount", "txn_id"),
}
# Parents before children (foreign keys).
_ORDER = tuple(_COLUMNS)

Row = tuple[object, ...]


class BatchPlan(msgspec.Struct, frozen=True, kw_only=True):
    start: int
    count: int
    admdvs: str
    psn_seq_base: int
    card_seq_base: int
    case_seq_base: int
    txn_id: int
    counter_id: str
    data_key_hex: str


_protector: DataProtector | None = None


def _protector_for(key_hex: str) -> DataProtector:
    global _protector  # one per worker process: the sub-key derivation is not free
    if _protector is None:
        _protector = DataProtector(bytes.fromhex(key_hex))
    return _protector


def build_batch(plan: BatchPlan) -> dict[str, list[Row]]:
    """The rows of persons ``start .. start+count-1``, table by table."""
    protector = _protector_for(plan.data_key_hex)
    rows: dict[str, list[Row]] = {table: [] for table in _COLUMNS}
    credited = 0
    line = 1
    for i in range(plan.start, plan.start + plan.count):
        p = population.Person(i)
        psn_no = population.psn_no(plan.admdvs, plan.psn_seq_base + 1 + i)
        rows["persons"].append(
            (
                psn_no,
                protector.lookup_hash(p.certno),
                protector.encrypt(p.certno.encode(), psn_no.encode()),
                mask(p.certno),
                p.name,
                p.gend,
                p.brdy.year,
                plan.admdvs,
                p.psn_type,
            )
        )
        rows["psn_accounts"].append((psn_no, p.balance))
        rows["insurances"].extend((psn_no, t, _BEGIN) for t in p.insutypes)
        issued = dt.date(2017, 1, 1) + dt.timedelta(days=population.mix(i) % 3200)
        rows["cards"].append(
            (
                population.card_no(plan.card_seq_base + 1 + i),
                plan.admdvs + secrets.token_hex(13),
                psn_no,
                plan.admdvs,
                "active",
                issued,
                expiry_for(issued),
                plan.counter_id,
            )
        )
        if p.injured:
            rows["injury_cases"].append(
                (
                    population.case_id(plan.case_seq_base + 1 + i),
                    psn_no,
                    "无锡某制造有限公司",
                    _CASE_FROM,
                    _CASE_FROM,
                    _CASE_TO,
                    "approved",
                )
            )
        if p.balance:
            line += 1
            credited += p.balance
            ref = f"LTSEED-{psn_no}"
            rows["ledger_entries"].append(
                (plan.txn_id, line, person_account(psn_no), "C", p.balance)
            )
            rows["account_credits"].append((ref, psn_no, p.balance, plan.txn_id))
    if credited:
        rows["ledger_txns"].append((plan.txn_id, "account_credit", f"LTSEED-{plan.start}"))
        rows["ledger_entries"].append((plan.txn_id, 1, CONTRIB_PERSONAL_ACCOUNT, "D", credited))
    return rows


async def copy_rows(conn: asyncpg.Connection, rows: dict[str, list[Row]]) -> None:
    async with conn.transaction():
        for table in _ORDER:
            if rows[table]:
                await conn.copy_records_to_table(
                    table, records=rows[table], columns=list(_COLUMNS[table])
                )


async def _reserve_txn_ids(conn: asyncpg.Connection, n: int) -> list[int]:
    rows = await conn.fetch(
        "SELECT nextval('ledger_txns_txn_id_seq') AS id FROM generate_series(1, $1)", n
    )
    return [r["id"] for r in rows]


async def _sequence_base(conn: asyncpg.Connection, sequence: str) -> int:
    """The last number the sequence handed out (0 if none)."""
    row = await conn.fetchrow(f"SELECT last_value, is_called FROM {sequence}")  # noqa: S608
    return int(row["last_value"]) if row["is_called"] else int(row["last_value"]) - 1


async def advance_sequences(conn: asyncpg.Connection, city: City) -> None:
    """Past every seeded number, so the service's own persons and cards never collide."""
    for sequence, base in (
        ("psn_no_seq", city.psn_seq_base),
        ("card_no_seq", city.card_seq_base),
        ("injury_case_seq", city.case_seq_base),
    ):
        await conn.execute(
            f"SELECT setval($1::regclass, greatest($2, (SELECT last_value FROM {sequence})))",  # noqa: S608 - constant name
            sequence,
            base + city.persons,
        )


async def init_bases(conn: asyncpg.Connection, city: City) -> None:
    city.psn_seq_base = await _sequence_base(conn, "psn_no_seq")
    city.card_seq_base = await _sequence_base(conn, "card_no_seq")
    city.case_seq_base = await _sequence_base(conn, "injury_case_seq")


async def load_persons(
    database_url: str,
    city: City,
    target: int,
    *,
    counter_id: str,
    data_key: bytes,
    batch: int,
    on_batch: Callable[[], None] | None = None,
) -> int:
    """COPY persons ``city.persons .. target-1``; ``city.persons`` follows each commit."""
    batch = max(1, min(batch, MAX_BATCH))
    todo = max(0, target - city.persons)
    if todo == 0:
        return 0
    conn = await asyncpg.connect(database_url)
    pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))
    loop = asyncio.get_running_loop()
    try:
        starts = list(range(city.persons, target, batch))
        txn_ids = await _reserve_txn_ids(conn, len(starts))
        plans = [
            BatchPlan(
                start=s,
                count=min(batch, target - s),
                admdvs=city.admdvs,
                psn_seq_base=city.psn_seq_base,
                card_seq_base=city.card_seq_base,
                case_seq_base=city.case_seq_base,
                txn_id=txn_id,
                counter_id=counter_id,
                data_key_hex=data_key.hex(),
            )
            for s, txn_id in zip(starts, txn_ids, strict=True)
        ]
        with tqdm(total=todo, unit="persons", unit_scale=True, desc="persons") as bar:
            pending = loop.run_in_executor(pool, build_batch, plans[0])
            for k, plan in enumerate(plans):
                rows = await pending
                if k + 1 < len(plans):
                    pending = loop.run_in_executor(pool, build_batch, plans[k + 1])
                await copy_rows(conn, rows)
                city.persons = plan.start + plan.count
                await advance_sequences(conn, city)
                if on_batch is not None:
                    on_batch()
                bar.update(plan.count)
        await conn.execute("ANALYZE")
    finally:
        pool.shutdown(cancel_futures=True)
        await conn.close()
    return todo
