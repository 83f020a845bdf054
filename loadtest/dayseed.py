"""``seed-settlements``: a business day of N settlements, by COPY, consistent with the proof.

Amounts come from the service's own policy engine: a few hundred templates (pharmacy
purchases, outpatient and inpatient visits at every level, employees and residents) are
settled by ``cardsvc.settlement.policy.settle`` for a fresh year, and each seeded settlement
takes one, for a random person of the right scheme at a facility drawn with weights (level-3
hospitals are the busiest). Each row set is what the service writes: the settlement, its
lines, its ledger transaction (``settlement_postings``), the account debit; about
``--reversed-percent`` are reversed the same day (reversal row, swapped entries, the account
refunded). ``year_delta`` is zero and year states are left alone: these are history, not
part of any person's running year, and reversing one takes back exactly nothing.

Not written: audit entries and supervision flags (as for the seeded persons).
"""

from __future__ import annotations

import datetime as dt
import random
import secrets
import time
from typing import Any

import asyncpg
import msgspec
from tqdm import tqdm

from cardsvc.clock import BUSINESS_TZ, business_date
from cardsvc.ledger.postings import Posting, reversed_postings
from cardsvc.settlement import policy
from cardsvc.settlement.params import CURRENT_POLICY_VERSION, load_params
from cardsvc.settlement.postings import settlement_postings
from cardsvc.settlement.store import lines_column
from loadtest import city as layout
from loadtest import population, scenarios
from loadtest.environment import Environment
from loadtest.state import City, CityDay, Facility, StateDir, WorkCard

BATCH = 50_000
TEMPLATES_PER_KIND = 40
_LEVEL_WEIGHT = {"3": 8, "2": 4, "1": 2, "community": 1, None: 1}
_json = msgspec.json.Encoder()
_ZERO_DELTA = _json.encode(policy.YearState()).decode()

_SETTLEMENT_COLUMNS = (
    "setl_id", "psn_no", "card_no", "fixmedins_code", "fixmedins_type", "terminal_id",
    "idempotency_key", "request_hash", "insutype", "med_type", "mdtrt_id", "acct_used_flag",
    "policy_version", "setl_time", "setl_date", "medfee_sumamt", "fulamt_ownpay_amt",
    "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt", "act_pay_dedc", "hifp_pay",
    "pool_prop_selfpay", "acct_pay", "fund_pay_sumamt", "psn_part_amt", "psn_cash_pay",
    "balc", "setldetail", "year_delta", "review_status", "status", "lines",
)  # fmt: skip
_REVERSAL_COLUMNS = (
    "reversal_id", "setl_id", "psn_no", "fixmedins_code", "actor", "reason", "revs_time",
    "revs_date", "acct_refund", "fund_refund", "balc",
)  # fmt: skip
_AMOUNTS = (
    "medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt",
    "inscp_scp_amt", "act_pay_dedc", "hifp_pay", "pool_prop_selfpay",
)  # fmt: skip


class Template(msgspec.Struct, frozen=True):
    insutype: str
    med_type: str
    acct_used_flag: bool
    body: dict[str, Any]
    split: policy.Split
    fees: tuple[policy.FeeLine, ...]


def _catalog(c: City) -> dict[str, policy.CatalogItem]:
    bodies = layout.POLICY_CATALOG + [layout.extra_item(n) for n in range(1, c.catalog_items + 1)]
    return {
        b["code"]: policy.CatalogItem(
            code=b["code"],
            chrgitm_lv=b["chrgitm_lv"],
            selfpay_prop=b.get("selfpay_prop"),
            max_price=b.get("max_price"),
            work_injury=bool(b.get("work_injury", False)),
        )
        for b in bodies
    }


def _facility_info(f: Facility) -> policy.FacilityInfo:
    return policy.FacilityInfo(
        fixmedins_code=f.fixmedins_code,
        type="hospital" if f.type == "hospital" else "pharmacy",
        level=f.level,
        credit_rating=f.credit_rating,
        status="active",
        agreements=frozenset(f.agreements),
    )


def _kinds(f: Facility) -> list[tuple[str, str]]:
    """(operation, insutype) pairs this facility settles in the seeded day."""
    if f.type == "pharmacy":
        return [("pharmacy", "310")]
    return [
        ("outpatient", "310"),
        ("outpatient", "390"),
        ("inpatient", "310"),
        ("inpatient", "390"),
    ]


def templates(
    c: City, day: dt.date, rng: random.Random
) -> dict[tuple[str, str, str], list[Template]]:
    """Per (operation, insutype, level or 'pharmacy'): settled bodies, acct on and off."""
    params = load_params(CURRENT_POLICY_VERSION)
    catalog = _catalog(c)
    items = scenarios.Catalog(layout.items(c.catalog_items))
    out: dict[tuple[str, str, str], list[Template]] = {}
    seen: set[tuple[str, str, str]] = set()
    for f in c.facilities:
        if not layout.loaded(f):
            continue
        for op, insutype in _kinds(f):
            key = (op, insutype, f.level or "pharmacy")
            if key in seen:
                continue
            seen.add(key)
            employee = insutype == "310"
            card = WorkCard(
                card_no="A00000000", card_sn="", psn_no="", gend="1", injury_case_id=None,
                psn_type="in_service" if employee else "resident",
                insutypes=["310"] if employee else ["390"], k_auth="", k_txn="",
            )  # fmt: skip
            for n in range(TEMPLATES_PER_KIND):
                body = scenarios.settlement(op, card, f, items, rng, f"T{n}")
                acct = employee and n % 3 != 0
                lines = tuple(
                    policy.FeeLine(
                        code=x["code"], unit_price=x["unit_price"], quantity=x["quantity"]
                    )
                    for x in body["feedetail"]
                )
                snapshot = policy.Snapshot(
                    psn_no="0", psn_type=card.psn_type, card_status="active", settle_date=day,
                    balance=rng.randint(5_000, 300_000) if acct else 0,
                    year=policy.YearState(),
                    enrolments=(policy.Enrolment(insutype=insutype, begndate=dt.date(2020, 1, 1)),),
                    facility=_facility_info(f),
                    catalog={code: catalog[code] for code in {x.code for x in lines}},
                )  # fmt: skip
                request = policy.SettlementRequest(
                    insutype=insutype, med_type=body["med_type"], acct_used_flag=acct, lines=lines
                )
                split = policy.settle(params, snapshot, request)
                out.setdefault(key, []).append(
                    Template(insutype, body["med_type"], acct, body, split, lines)
                )
    return out


class _Day:
    """Builds the rows of one day, batch by batch, tracking balances and totals."""

    def __init__(
        self,
        c: City,
        day: dt.date,
        balances: dict[str, int],
        rng: random.Random,
        reversed_share: float,
    ) -> None:
        self.c, self.day, self.balances, self.rng = c, day, balances, rng
        self.reversed_share = reversed_share
        self.templates = templates(c, day, rng)
        self.cash_only = {
            k: [t for t in ts if not t.split.acct_pay] for k, ts in self.templates.items()
        }
        self.facilities = [f for f in c.facilities if layout.loaded(f)]
        self.weights = [_LEVEL_WEIGHT[f.level] for f in self.facilities]
        self.pos = {t.fixmedins_code: t.terminal_id for t in c.terminals if t.kind == "pos"}
        self.totals: dict[str, list[int]] = {}
        self.reversed = 0
        self.day_start = dt.datetime.combine(day, dt.time(8), BUSINESS_TZ)

    def _pick(self) -> tuple[int, Facility, Template]:
        while True:
            i = self.rng.randrange(self.c.persons)
            person = population.Person(i)
            f = self.rng.choices(self.facilities, self.weights)[0]
            employee = person.psn_type != "resident"
            if f.type == "pharmacy" and not employee:
                continue
            op = (
                "pharmacy"
                if f.type == "pharmacy"
                else self.rng.choice(("outpatient",) * 9 + ("inpatient",))
            )
            key = (op, "310" if employee else "390", f.level or "pharmacy")
            return i, f, self.rng.choice(self.templates[key])

    def batch(self, count: int, txn_ids: list[int]) -> dict[str, list[tuple[Any, ...]]]:
        rows: dict[str, list[tuple[Any, ...]]] = {
            k: [] for k in ("settlements", "txns", "entries", "reversals", "debits")
        }
        ids = iter(txn_ids)
        for _ in range(count):
            i, f, t = self._pick()
            psn_no = population.psn_no(self.c.admdvs, self.c.psn_seq_base + 1 + i)
            if t.split.acct_pay > self.balances.get(psn_no, 0):
                # Not enough in the account: the same kind of visit, paid without it.
                t = self.rng.choice(self.cash_only[self._key(t, f)])
            self._one(rows, ids, psn_no, i, f, t, t.split)
        return rows

    @staticmethod
    def _key(t: Template, f: Facility) -> tuple[str, str, str]:
        op = {"41": "pharmacy", "11": "outpatient", "21": "inpatient"}[t.med_type]
        return op, t.insutype, f.level or "pharmacy"

    def _one(
        self,
        rows: dict[str, list[tuple[Any, ...]]],
        ids: Any,
        psn_no: str,
        i: int,
        f: Facility,
        t: Template,
        split: policy.Split,
    ) -> None:
        setl_id = f"S{self.day:%Y%m%d}{secrets.token_hex(10)}"
        when = self.day_start + dt.timedelta(seconds=self.rng.randrange(12 * 3600))
        balance = self.balances.get(psn_no, 0)
        reverse = self.rng.random() < self.reversed_share
        balc = balance - split.acct_pay
        if not reverse and split.acct_pay:
            self.balances[psn_no] = balc
            rows["debits"].append((psn_no, split.acct_pay))
        rows["settlements"].append(
            (
                setl_id, psn_no, population.card_no(self.c.card_seq_base + 1 + i),
                f.fixmedins_code, f.type, self.pos[f.fixmedins_code],
                f"LTDAY-{setl_id[9:]}", secrets.token_bytes(32), t.insutype, t.med_type,
                f"MDDAY{setl_id[9:]}", t.acct_used_flag, split.policy_version, when,
                self.day, *(getattr(split, a) for a in _AMOUNTS), split.acct_pay,
                split.fund_pay_sumamt, split.psn_part_amt, split.psn_cash_pay, balc,
                _json.encode([msgspec.to_builtins(x) for x in split.setldetail]).decode(),
                _ZERO_DELTA, "none", "reversed" if reverse else "settled",
                _json.encode(lines_column(split, t.fees)).decode(),
            )
        )  # fmt: skip
        postings = settlement_postings(psn_no, f.fixmedins_code, split)
        if postings:
            self._post(rows, next(ids), "settlement", setl_id, postings)
        if reverse:
            self.reversed += 1
            if postings:
                self._post(rows, next(ids), "reversal", setl_id, reversed_postings(postings))
            rows["reversals"].append(
                (
                    "R" + setl_id[1:], setl_id, psn_no, f.fixmedins_code,
                    f"terminal:{self.pos[f.fixmedins_code]}", "patient returned the goods",
                    when + dt.timedelta(minutes=5), self.day, split.acct_pay,
                    split.fund_pay_sumamt, balance,
                )
            )  # fmt: skip
            return
        total = self.totals.setdefault(f"{f.fixmedins_code}:{t.insutype}", [0, 0, 0, 0])
        total[0] += 1
        total[1] += split.medfee_sumamt
        total[2] += split.fund_pay_sumamt
        total[3] += split.acct_pay

    @staticmethod
    def _post(
        rows: dict[str, list[tuple[Any, ...]]],
        txn_id: int,
        kind: str,
        ref: str,
        postings: list[Posting],
    ) -> None:
        rows["txns"].append((txn_id, kind, ref))
        rows["entries"].extend(
            (txn_id, n, p.account, p.side, p.amount) for n, p in enumerate(postings, 1)
        )


async def _copy(conn: asyncpg.Connection, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    async with conn.transaction():
        await conn.copy_records_to_table(
            "settlements", records=rows["settlements"], columns=list(_SETTLEMENT_COLUMNS)
        )
        await conn.copy_records_to_table(
            "ledger_txns", records=rows["txns"], columns=["txn_id", "kind", "ref"]
        )
        await conn.copy_records_to_table(
            "ledger_entries",
            records=rows["entries"],
            columns=["txn_id", "line", "account", "side", "amount"],
        )
        if rows["reversals"]:
            await conn.copy_records_to_table(
                "reversals", records=rows["reversals"], columns=list(_REVERSAL_COLUMNS)
            )
        if rows["debits"]:
            await conn.execute(
                """
                UPDATE psn_accounts a SET balance = a.balance - d.amount
                FROM (SELECT p, sum(x)::bigint AS amount
                      FROM unnest($1::text[], $2::bigint[]) AS t(p, x) GROUP BY p) d
                WHERE a.psn_no = d.p
                """,
                [d[0] for d in rows["debits"]],
                [d[1] for d in rows["debits"]],
            )


async def seed_day(
    env: Environment,
    state: StateDir,
    *,
    count: int,
    day: dt.date | None,
    reversed_percent: float,
) -> dict[str, Any]:
    c = state.load_city()
    if c is None or c.persons == 0:
        raise SystemExit("no city here: run `python -m loadtest seed` first")
    day = day or business_date() - dt.timedelta(days=1)
    if any(d.date == day for d in c.days):
        raise SystemExit(f"{day} is seeded already: choose another --date")
    if day >= business_date():
        raise SystemExit("seed a past day: today belongs to the live load")
    rng = random.Random(f"day:{day}")
    started = time.perf_counter()
    conn = await asyncpg.connect(env.database_url)
    try:
        balances = {
            r["psn_no"]: r["balance"]
            for r in await conn.fetch("SELECT psn_no, balance FROM psn_accounts WHERE balance > 0")
        }
        builder = _Day(c, day, balances, rng, reversed_percent / 100)
        with tqdm(total=count, unit="settlements", unit_scale=True, desc=str(day)) as bar:
            done = 0
            while done < count:
                n = min(BATCH, count - done)
                txn_ids = [
                    r["id"]
                    for r in await conn.fetch(
                        "SELECT nextval('ledger_txns_txn_id_seq') AS id"
                        " FROM generate_series(1, $1)",
                        2 * n,
                    )
                ]
                rows = builder.batch(n, txn_ids)
                await _copy(conn, rows)
                done += len(rows["settlements"])
                bar.update(len(rows["settlements"]))
        analysed = time.perf_counter()
        await conn.execute("ANALYZE settlements, ledger_txns, ledger_entries")
        await conn.execute("ANALYZE reversals, psn_accounts")
        analyse_s = time.perf_counter() - analysed
    finally:
        await conn.close()
    took = time.perf_counter() - started
    c.days.append(CityDay(date=day, count=count, reversed=builder.reversed, totals=builder.totals))
    c.seed_seconds[f"settlements {day}"] = round(took, 1)
    state.save_city(c)
    return {
        "date": day.isoformat(),
        "settlements": count,
        "reversed": builder.reversed,
        "facilities": len(builder.facilities),
        "seconds": round(took, 1),
        "analyse_seconds": round(analyse_s, 1),
        "per_second": round(count / took),
    }
