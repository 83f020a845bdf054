"""The figures of ``docs/policy.md``, generated from the policy file and the engine, pure.

``docs/policy.md`` is prose written by hand around blocks marked ::

    <!-- generated: NAME -->
    ...
    <!-- end generated: NAME -->

Every block is rendered here from :class:`~cardsvc.settlement.params.PolicyParams` (the
parameter tables) or by running :func:`~cardsvc.settlement.policy.settle` (the worked
examples) and :func:`~cardsvc.settlement.policy.line_result` (the lines with a decimal price
and count), so no figure of the policy is typed into the document. Each worked example also
spells the arithmetic out step by step; those steps are recomputed here from the rules as
the document states them and must equal the engine's result to the fen, or rendering fails.

``python -m cardsvc.settlement.policydoc`` rewrites the blocks of ``docs/policy.md`` in place
(``--check``: only say whether they are current; exit status 1 if not). ``tests/test_docs.py``
fails when the committed document differs from what this module renders.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import msgspec

from cardsvc.money import yuan
from cardsvc.settlement.params import (
    CURRENT_POLICY_VERSION,
    PolicyParams,
    SchemeRules,
    load_params,
)
from cardsvc.settlement.policy import (
    DELIVERY,
    E4,
    INPATIENT,
    OUTPATIENT,
    PHARMACY_PURCHASE,
    PRENATAL,
    STEP3_AMOUNTS,
    CatalogItem,
    DecimalLine,
    DeliveryType,
    Enrolment,
    FacilityInfo,
    FeeLine,
    InjuryCase,
    LineSplit,
    PolicyRefusal,
    SettlementRequest,
    Snapshot,
    Split,
    YearState,
    apply_delta,
    line_result,
    pct,
    settle,
)


def _scheme(rules: SchemeRules) -> str:
    """The one insutype whose fund payment the engine computes with ``rules``."""
    (code,) = load_params(CURRENT_POLICY_VERSION).insutypes_under(rules)
    return code


# The schemes by what the engine does for them: their codes come from the policy file.
EMPLOYEE = _scheme("employee_medical")
RESIDENT = _scheme("resident_medical")
WORK_INJURY = _scheme("work_injury")
MATERNITY = _scheme("maternity")

BEGIN = "<!-- generated: {name} -->"
END = "<!-- end generated: {name} -->"
_BLOCK = re.compile(
    r"^<!-- generated: (?P<name>[a-z0-9-]+) -->\n.*?^<!-- end generated: (?P=name) -->$",
    re.DOTALL | re.MULTILINE,
)

# Names of the national codes (not policy figures: the policy file says which are allowed).
SCHEMES = {
    EMPLOYEE: "employee basic medical insurance (职工基本医疗保险)",
    RESIDENT: "urban-rural resident medical insurance (城乡居民医疗保险)",
    WORK_INJURY: "work-injury insurance (工伤保险), direct settlement",
    MATERNITY: "maternity insurance (生育保险)",
}
MED_TYPES = {
    OUTPATIENT: "outpatient",
    INPATIENT: "inpatient stay",
    PHARMACY_PURCHASE: "purchase",
    PRENATAL: "prenatal outpatient",
    DELIVERY: "delivery",
}
LEVELS = ("community", "1", "2", "3")
TREATMENTS = {
    "in_scope": "in scope: all of the base",
    "pre_self_pay": "pre-self-pay: `pct(base, selfpay_prop)`, the rest in scope",
    "full_own_pay": "full own-pay: all of the base",
}
SETTLE_DATE = dt.date(2026, 3, 15)
DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
PSN_NO = "3202000000000001"


def fen(amount: int) -> str:
    """``amount`` fen as the document writes it: ``2,402,400``."""
    return f"{amount:,}"


def money(amount: int) -> str:
    """``¥24,024.00 (2,402,400 fen)``."""
    return f"{yuan(amount)} ({fen(amount)} fen)"


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    head = list(header)
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


# --- parameter tables --------------------------------------------------------------------


def _codes(params: PolicyParams) -> list[str]:
    rows: list[tuple[str, ...]] = []
    for insutype, name in SCHEMES.items():
        allowed = [r for r in params.allowed_med_types if r.insutype == insutype]
        where = ", ".join(
            f"`{r.med_type}` {MED_TYPES[r.med_type]} at a {r.facility_type}" for r in allowed
        )
        rows.append(
            (
                f"`{insutype}`",
                name,
                where,
                ", ".join(f"`{t}`" for t in sorted(params.person_types[insutype])),
                f"`{params.fund_pay_types[insutype]}`",
                "yes" if insutype in params.account_insutypes else "no",
            )
        )
    header = ("insutype", "scheme", "allowed med_type", "person types", "fund", "account")
    return _table(header, rows)


def _ratings(params: PolicyParams) -> list[str]:
    suspended = ", ".join(f"`{r}`" for r in sorted(params.facility_ratings.suspended))
    review = ", ".join(f"`{r}`" for r in sorted(params.facility_ratings.review))
    return _table(
        ("credit rating", "what happens"),
        [
            (suspended, "refused as `FACILITY_SUSPENDED`, even when the facility is active"),
            (review, "accepted, marked `review_required`, held out of clearing until approved"),
        ],
    )


def _line_treatment(params: PolicyParams) -> list[str]:
    rows = [
        (f"`{insutype}`", *(TREATMENTS[table[c]] for c in ("A", "B", "C")))
        for insutype, table in sorted(params.line_treatment.items())
    ]
    rows += [
        (f"`{i}`", "in scope if the item is flagged `work_injury`, else full own-pay", "", "")
        for i in sorted(params.work_injury_insutypes)
    ]
    out = _table(("insutype", "class `A` (甲类)", "class `B` (乙类)", "class `C` (丙类)"), rows)
    out += [
        "",
        f"A class `B` item without its own `selfpay_prop` uses {params.default_selfpay_prop} %.",
    ]
    return out


def _employee(params: PolicyParams) -> list[str]:
    inp, outp = params.employee.inpatient, params.employee.outpatient
    bonus_in = ", ".join(f"`{t}` +{b}" for t, b in sorted(inp.ratio_bonus.items()))
    bonus_out = ", ".join(f"`{t}` +{b}" for t, b in sorted(outp.ratio_bonus.items()))
    out = _table(
        ("facility level", *(f"`{level}`" for level in LEVELS)),
        [
            ("inpatient deductible `D`", *(money(inp.deductible[v]) for v in LEVELS)),
            ("inpatient fund ratio %", *(str(inp.ratio[v]) for v in LEVELS)),
            ("outpatient fund ratio % after the segment", *(str(outp.ratio[v]) for v in LEVELS)),
        ],
    )
    thresholds = ", ".join(
        f"`{psn}` {money(t)}" for psn, t in sorted(outp.segment_threshold.items())
    )
    out += [
        "",
        f"- Inpatient ratio bonus by person type: {bonus_in}; ratio plus bonus at most "
        f"{inp.ratio_max} %.",
        f"- A further admission in the same year: `D` divided by "
        f"{inp.repeat_admission_divisor} (integer division).",
        f"- Outpatient ratio bonus by person type: {bonus_out}.",
        f"- Outpatient annual self-pay segment `T`: {thresholds}.",
        f"- Annual pooled-fund cap (all `{EMPLOYEE}` `hifp_pay` of the year): "
        f"{money(params.employee.annual_cap)}.",
    ]
    return out


def _resident(params: PolicyParams) -> list[str]:
    inp, outp = params.resident.inpatient, params.resident.outpatient
    out = _table(
        ("facility level", *(f"`{level}`" for level in LEVELS)),
        [
            ("inpatient deductible `D`", *(money(inp.deductible[v]) for v in LEVELS)),
            ("inpatient fund ratio %", *(str(inp.ratio[v]) for v in LEVELS)),
            (
                "outpatient fund ratio %",
                *(str(outp.ratio) if v in outp.paying_levels else "0" for v in LEVELS),
            ),
        ],
    )
    out += [
        "",
        f"- Outpatient: the fund pays at levels "
        f"{', '.join(f'`{v}`' for v in LEVELS if v in outp.paying_levels)} only, at most "
        f"{money(outp.annual_fund_limit)} a year.",
        f"- Annual pooled-fund cap (all `{RESIDENT}` `hifp_pay` of the year): "
        f"{money(params.resident.annual_cap)}.",
    ]
    return out


def _maternity(params: PolicyParams) -> list[str]:
    m = params.maternity
    return _table(
        ("rule", "figure"),
        [
            (f"`{PRENATAL}` prenatal: fund per year", money(m.prenatal_annual_limit)),
            (f"`{DELIVERY}` delivery quota, `normal`", money(m.delivery_quota["normal"])),
            (f"`{DELIVERY}` delivery quota, `cesarean`", money(m.delivery_quota["cesarean"])),
            (f"`{DELIVERY}` deliveries per person per year", str(m.deliveries_per_year)),
        ],
    )


BIGINT_MAX = 2**63 - 1


def _amount_limits(params: PolicyParams) -> list[str]:
    limits = params.amount_limits
    out = _table(
        ("limit (`amount_limits`)", "figure"),
        [
            ("`unit_price` of a line", money(limits.unit_price)),
            ("`quantity` of a line", fen(limits.quantity)),
            ("`line_total`: a line's `unit_price × quantity`", money(limits.line_total)),
            (
                "`settlement_total`: the settlement's `medfee_sumamt`",
                money(limits.settlement_total),
            ),
        ],
    )
    count = BIGINT_MAX // limits.settlement_total
    return [
        *out,
        "",
        f"A PostgreSQL `bigint` holds the sum of {count:,} settlements at the settlement limit.",
    ]


def _supervision(params: PolicyParams) -> list[str]:
    rules = params.supervision
    return _table(
        ("flag", "raised when"),
        [
            (
                "`PHARMACY_FREQUENCY`",
                f"this purchase is the person's purchase number "
                f"{rules.pharmacy_purchases_per_day + 1} or more at pharmacies on the "
                f"business date (more than {rules.pharmacy_purchases_per_day})",
            ),
            ("`LARGE_CLAIM`", f"`medfee_sumamt` above {money(rules.large_claim_fen)}"),
            (
                "`CARD_AT_TWO_FACILITIES`",
                f"the same card settled at another facility in the last "
                f"{rules.other_facility_window_s} s",
            ),
        ],
    )


# --- worked examples ----------------------------------------------------------------------

EXAMPLE_CATALOG: Mapping[str, CatalogItem] = {
    "A-AMOX": CatalogItem(code="A-AMOX", chrgitm_lv="A"),
    "B-CEF": CatalogItem(code="B-CEF", chrgitm_lv="B", selfpay_prop=10, max_price=2000),
    "B-STENT": CatalogItem(code="B-STENT", chrgitm_lv="B", selfpay_prop=20),
    "C-VIT": CatalogItem(code="C-VIT", chrgitm_lv="C"),
    "W-SUT": CatalogItem(code="W-SUT", chrgitm_lv="A", work_injury=True),
}


class Example(msgspec.Struct, frozen=True, kw_only=True):
    """One worked example: who, where, what was billed."""

    label: str
    title: str
    insutype: str
    med_type: str
    psn_type: str
    level: str | None  # None: a pharmacy
    lines: tuple[tuple[str, int, int], ...]  # code, unit price in fen, quantity
    balance: int = 0
    year: YearState = YearState()
    delivery_type: DeliveryType | None = None
    injury_case: bool = False
    note: str = ""


EXAMPLES = (
    Example(
        label="STAY",
        title="an inpatient stay at the demo's level-3 hospital",
        insutype=EMPLOYEE,
        med_type=INPATIENT,
        psn_type="in_service",
        level="3",
        balance=500000,
        lines=(("B-STENT", 3000000, 1), ("A-AMOX", 1200, 2), ("C-VIT", 3000, 4)),
        note="The terminal printed this settlement as the line below; the steps say why.",
    ),
    Example(
        label="E1",
        title="employee in service, inpatient, level-3 hospital, first admission of the year",
        insutype=EMPLOYEE,
        med_type=INPATIENT,
        psn_type="in_service",
        level="3",
        balance=50000,
        lines=(("A-AMOX", 100000, 3), ("B-CEF", 2500, 4), ("C-VIT", 3000, 1)),
    ),
    Example(
        label="E2",
        title="retired employee, outpatient, community hospital, segment partly paid this year",
        insutype=EMPLOYEE,
        med_type=OUTPATIENT,
        psn_type="retired",
        level="community",
        balance=3000,
        year=YearState(seg_310=65000),
        lines=(("A-AMOX", 12000, 1), ("B-CEF", 1800, 2)),
    ),
    Example(
        label="E3",
        title="employee in service, purchase at a pharmacy",
        insutype=EMPLOYEE,
        med_type=PHARMACY_PURCHASE,
        psn_type="in_service",
        level=None,
        balance=10000,
        lines=(("B-CEF", 1800, 3), ("C-VIT", 2000, 1)),
    ),
    Example(
        label="E4",
        title="work injury, inpatient, level-2 hospital, approved case",
        insutype=WORK_INJURY,
        med_type=INPATIENT,
        psn_type="in_service",
        level="2",
        balance=7000,
        injury_case=True,
        lines=(("W-SUT", 50000, 2), ("A-AMOX", 3000, 1)),
    ),
    Example(
        label="E5",
        title="resident, outpatient, level-1 hospital, outpatient fund mostly used this year",
        insutype=RESIDENT,
        med_type=OUTPATIENT,
        psn_type="resident",
        level="1",
        year=YearState(outpatient_fund_390=48000),
        lines=(("A-AMOX", 10000, 1),),
    ),
    Example(
        label="E6",
        title="maternity, cesarean delivery, level-3 hospital",
        insutype=MATERNITY,
        med_type=DELIVERY,
        psn_type="in_service",
        level="3",
        delivery_type="cesarean",
        lines=(("A-AMOX", 400000, 1), ("B-STENT", 200000, 1), ("C-VIT", 5000, 1)),
    ),
)


def example_inputs(example: Example) -> tuple[Snapshot, SettlementRequest]:
    """The engine's inputs for one worked example (an active card, an A-rated facility)."""
    facility = FacilityInfo(
        fixmedins_code="H0001" if example.level is not None else "P0001",
        type="hospital" if example.level is not None else "pharmacy",
        level=example.level,
        credit_rating="A",
        status="active",
        agreements=frozenset({example.insutype}),
    )
    case = InjuryCase(
        case_id="IC1",
        psn_no=PSN_NO,
        status="approved",
        valid_from=SETTLE_DATE.replace(month=1, day=1),
        valid_to=SETTLE_DATE.replace(month=12, day=31),
    )
    snapshot = Snapshot(
        psn_no=PSN_NO,
        psn_type=example.psn_type,
        card_status="active",
        settle_date=SETTLE_DATE,
        balance=example.balance,
        year=example.year,
        enrolments=(Enrolment(insutype=example.insutype, begndate=dt.date(2020, 1, 1)),),
        facility=facility,
        catalog={code: EXAMPLE_CATALOG[code] for code, _, _ in example.lines},
        injury_case=case if example.injury_case else None,
    )
    request = SettlementRequest(
        insutype=example.insutype,
        med_type=example.med_type,
        injury_case_id=case.case_id if example.injury_case else None,
        delivery_type=example.delivery_type,
        lines=tuple(FeeLine(code=c, unit_price=p, quantity=q) for c, p, q in example.lines),
    )
    return snapshot, request


class StepMismatch(ValueError):
    """The rule as the document states it does not give the engine's figure."""


def _same(what: str, stated: int, engine: int) -> int:
    if stated != engine:
        raise StepMismatch(f"{what}: the document's rule gives {stated}, the engine {engine}")
    return stated


def _employee_inpatient_steps(p: PolicyParams, ex: Example, s: Split) -> list[str]:
    rules, level = p.employee.inpatient, ex.level or ""
    S, pre = s.inscp_scp_amt, s.preselfpay_amt
    d = rules.deductible[level]
    further = ex.year.inpatient_310 > 0
    if further:
        d //= rules.repeat_admission_divisor
    dedc = _same("act_pay_dedc", min(S, d), s.act_pay_dedc)
    rest = S - dedc
    ratio = min(rules.ratio[level] + rules.ratio_bonus.get(ex.psn_type, 0), rules.ratio_max)
    cap_left = max(0, p.employee.annual_cap - ex.year.hifp_310)
    hifp = _same("hifp_pay", min(pct(rest, ratio), cap_left), s.hifp_pay)
    pool = _same("pool_prop_selfpay", rest - hifp, s.pool_prop_selfpay)
    acct = _same("acct_pay", min(ex.balance, dedc + pool + pre), s.acct_pay)
    admission = "a further admission this year" if further else "the first admission this year"
    return [
        f"Deductible at level `{level}`, {admission}: `D` = {fen(d)}; "
        f"`act_pay_dedc = min(S, D)` = {fen(dedc)}.",
        f"`R = S − act_pay_dedc` = {fen(S)} − {fen(dedc)} = {fen(rest)}.",
        f"Fund ratio for `{ex.psn_type}` at level `{level}`: {ratio} %; cap left "
        f"{fen(cap_left)}; `hifp_pay = min(pct(R, {ratio}), cap_left)` = {fen(hifp)}.",
        f"`pool_prop_selfpay = R − hifp_pay` = {fen(pool)}.",
        f"Account: `min(balance, act_pay_dedc + pool_prop_selfpay + preselfpay_amt)` = "
        f"`min({fen(ex.balance)}, {fen(dedc)} + {fen(pool)} + {fen(pre)})` = {fen(acct)}.",
    ]


def _employee_outpatient_steps(p: PolicyParams, ex: Example, s: Split) -> list[str]:
    rules, level = p.employee.outpatient, ex.level or ""
    S, pre = s.inscp_scp_amt, s.preselfpay_amt
    a1 = min(ex.balance, S)
    q = S - a1
    t = rules.segment_threshold[ex.psn_type]
    seg = _same("act_pay_dedc", min(q, max(0, t - ex.year.seg_310)), s.act_pay_dedc)
    q2 = q - seg
    ratio = rules.ratio[level] + rules.ratio_bonus.get(ex.psn_type, 0)
    cap_left = max(0, p.employee.annual_cap - ex.year.hifp_310)
    hifp = _same("hifp_pay", min(pct(q2, ratio), cap_left), s.hifp_pay)
    _same("pool_prop_selfpay", q2 - hifp, s.pool_prop_selfpay)
    a2 = min(ex.balance - a1, pre)
    _same("acct_pay", a1 + a2, s.acct_pay)
    return [
        f"The account pays in scope first: `a1 = min(balance, S)` = "
        f"`min({fen(ex.balance)}, {fen(S)})` = {fen(a1)}; `Q = S − a1` = {fen(q)}.",
        f"Self-pay segment: `T` for `{ex.psn_type}` = {fen(t)}, already paid this year "
        f"{fen(ex.year.seg_310)}; `seg = min(Q, T − paid)` = {fen(seg)} (cash; it is "
        f"`act_pay_dedc`, and the year's segment becomes {fen(ex.year.seg_310 + seg)}).",
        f"`Q2 = Q − seg` = {fen(q2)}; fund ratio for `{ex.psn_type}` at level `{level}`: "
        f"{ratio} %; `hifp_pay = min(pct(Q2, {ratio}), cap_left)` = {fen(hifp)}; "
        f"`pool_prop_selfpay = Q2 − hifp_pay` = {fen(q2 - hifp)}.",
        f"Then the account pays pre-self-pay: `a2 = min(balance − a1, preselfpay_amt)` = "
        f"{fen(a2)}; `acct_pay = a1 + a2` = {fen(a1 + a2)}.",
    ]


def _employee_pharmacy_steps(p: PolicyParams, ex: Example, s: Split) -> list[str]:
    S, pre = s.inscp_scp_amt, s.preselfpay_amt
    acct = _same("acct_pay", min(ex.balance, S + pre), s.acct_pay)
    _same("hifp_pay", 0, s.hifp_pay)
    return [
        "No pooled fund at a pharmacy: `hifp_pay` = 0.",
        f"Account: `min(balance, S + preselfpay_amt)` = "
        f"`min({fen(ex.balance)}, {fen(S)} + {fen(pre)})` = {fen(acct)}.",
    ]


def _resident_inpatient_steps(p: PolicyParams, ex: Example, s: Split) -> list[str]:
    rules, level = p.resident.inpatient, ex.level or ""
    S = s.inscp_scp_amt
    dedc = _same("act_pay_dedc", min(S, rules.deductible[level]), s.act_pay_dedc)
    rest = S - dedc
    cap_left = max(0, p.resident.annual_cap - ex.year.hifp_390)
    hifp = _same("hifp_pay", min(pct(rest, rules.ratio[level]), cap_left), s.hifp_pay)
    return [
        f"`act_pay_dedc = min(S, D)` = {fen(dedc)}; `R` = {fen(rest)}.",
        f"`hifp_pay = min(pct(R, {rules.ratio[level]}), cap_left)` = {fen(hifp)}; "
        f"`pool_prop_selfpay` = {fen(rest - hifp)}. No personal account.",
    ]


def _resident_outpatient_steps(p: PolicyParams, ex: Example, s: Split) -> list[str]:
    rules, level = p.resident.outpatient, ex.level or ""
    S = s.inscp_scp_amt
    if level not in rules.paying_levels:
        _same("hifp_pay", 0, s.hifp_pay)
        return [f"Level `{level}` does not pay outpatient: `hifp_pay` = 0, all cash."]
    left = max(0, rules.annual_fund_limit - ex.year.outpatient_fund_390)
    cap_left = max(0, p.resident.annual_cap - ex.year.hifp_390)
    hifp = _same("hifp_pay", min(pct(S, rules.ratio), left, cap_left), s.hifp_pay)
    return [
        f"`pct(S, {rules.ratio})` = {fen(pct(S, rules.ratio))}; left of the outpatient limit "
        f"this year: {fen(rules.annual_fund_limit)} − {fen(ex.year.outpatient_fund_390)} = "
        f"{fen(left)}; `hifp_pay` = the least of them and the cap left = {fen(hifp)}.",
        f"`pool_prop_selfpay = S − hifp_pay` = {fen(S - hifp)}. No personal account.",
    ]


def _work_injury_steps(p: PolicyParams, ex: Example, s: Split) -> list[str]:
    fund = _same("fund_pay_sumamt", s.inscp_scp_amt, s.fund_pay_sumamt)
    code = p.fund_pay_types[ex.insutype]
    return [f"The work-injury fund `{code}` pays all in scope: {fen(fund)}. No account."]


def _maternity_steps(p: PolicyParams, ex: Example, s: Split) -> list[str]:
    S, m = s.inscp_scp_amt, p.maternity
    code = p.fund_pay_types[ex.insutype]
    if ex.med_type == PRENATAL:
        left = max(0, m.prenatal_annual_limit - ex.year.prenatal_510)
        fund = _same("fund_pay_sumamt", min(S, left), s.fund_pay_sumamt)
        return [f"Fund `{code}` = `min(S, prenatal limit left)` = {fen(fund)}."]
    quota = m.delivery_quota[ex.delivery_type or "normal"]
    fund = _same("fund_pay_sumamt", min(S, quota), s.fund_pay_sumamt)
    return [
        f"`{ex.delivery_type}` delivery quota {fen(quota)}; fund `{code}` = `min(S, quota)` = "
        f"{fen(fund)}; the rest of `S`, {fen(S - fund)}, is the person's. No account."
    ]


_Steps = Callable[[PolicyParams, Example, Split], list[str]]
_STEPS: dict[tuple[str, str], _Steps] = {
    (EMPLOYEE, INPATIENT): _employee_inpatient_steps,
    (EMPLOYEE, OUTPATIENT): _employee_outpatient_steps,
    (EMPLOYEE, PHARMACY_PURCHASE): _employee_pharmacy_steps,
    (RESIDENT, INPATIENT): _resident_inpatient_steps,
    (RESIDENT, OUTPATIENT): _resident_outpatient_steps,
    (WORK_INJURY, INPATIENT): _work_injury_steps,
    (WORK_INJURY, OUTPATIENT): _work_injury_steps,
    (WORK_INJURY, PHARMACY_PURCHASE): _work_injury_steps,
    (MATERNITY, PRENATAL): _maternity_steps,
    (MATERNITY, DELIVERY): _maternity_steps,
}

RESULT_FIELDS = STEP3_AMOUNTS


def _line_rows(ex: Example, s: Split) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for (code, price, qty), line in zip(ex.lines, s.lines, strict=True):
        item = EXAMPLE_CATALOG[code]
        facts = [f"class `{item.chrgitm_lv}`"]
        if item.selfpay_prop is not None:
            facts.append(f"selfpay_prop {item.selfpay_prop}")
        if item.max_price is not None:
            facts.append(f"max_price {fen(item.max_price)}")
        if item.work_injury:
            facts.append("work_injury")
        rows.append(
            (
                f"`{code}` ({', '.join(facts)})",
                f"{fen(price)} × {qty}",
                fen(line.total),
                fen(line.over),
                fen(line.fulamt_ownpay),
                fen(line.preselfpay),
                fen(line.inscp),
            )
        )
    return rows


def _state(ex: Example) -> str:
    used = [f"`{name}` {fen(v)}" for name, v in msgspec.structs.asdict(ex.year).items() if v]
    where = "a pharmacy" if ex.level is None else f"a level-`{ex.level}` hospital"
    if ex.level == "community":
        where = "a `community` hospital"
    parts = [
        f"`{ex.insutype}` {SCHEMES[ex.insutype]}, `{ex.med_type}` {MED_TYPES[ex.med_type]}",
        f"person type `{ex.psn_type}`, at {where}",
        f"account balance {fen(ex.balance)}",
        "year so far: " + (", ".join(used) if used else "nothing"),
    ]
    if ex.delivery_type is not None:
        parts.append(f"`delivery_type` `{ex.delivery_type}`")
    if ex.injury_case:
        parts.append("an approved injury case covering the date")
    return "; ".join(parts) + "."


def _example(params: PolicyParams, ex: Example) -> list[str]:
    snapshot, request = example_inputs(ex)
    s = settle(params, snapshot, request)
    S = s.inscp_scp_amt
    out = [f"#### {ex.label}: {ex.title}", "", _state(ex), ""]
    if ex.note:
        out += [ex.note, "", "```"]
        out += [
            f"total {yuan(s.medfee_sumamt)}  funds {yuan(s.fund_pay_sumamt)}  "
            f"account {yuan(s.acct_pay)}  cash {yuan(s.psn_cash_pay)}",
            "```",
            "",
        ]
    out += _table(
        ("line", "price × qty", "total", "over", "own-pay", "pre-self-pay", "in scope"),
        _line_rows(ex, s),
    )
    out += ["", "Steps (amounts in fen):", ""]
    out.append(
        f"- Step 1, the lines: `medfee_sumamt` {fen(s.medfee_sumamt)} = own-pay "
        f"{fen(s.fulamt_ownpay_amt)} + over-limit {fen(s.overlmt_selfpay)} + pre-self-pay "
        f"{fen(s.preselfpay_amt)} + in scope `S` {fen(S)}."
    )
    out.append("- Step 2, the funds:")
    out += [f"  - {step}" for step in _STEPS[(ex.insutype, ex.med_type)](params, ex, s)]
    out += ["- Step 3, the totals:", *(f"  - {step}" for step in _totals_steps(s))]
    out += ["", *_table(("field", "fen", "yuan"), _result_rows(s)), ""]
    out += _after(params, ex, snapshot, request, s)
    return out


def _totals_steps(s: Split) -> list[str]:
    S, fund, own = s.inscp_scp_amt, s.fund_pay_sumamt, s.fulamt_ownpay_amt
    details = ", ".join(f"`{d.fund_pay_type}` {fen(d.fund_payamt)}" for d in s.setldetail)
    cash = own + s.overlmt_selfpay + s.preselfpay_amt + (S - fund) - s.acct_pay
    _same("psn_cash_pay", cash, s.psn_cash_pay)
    return [
        f"`setldetail`: {details or 'empty'}; `fund_pay_sumamt` = {fen(fund)}.",
        f"`psn_part_amt = medfee_sumamt − fund_pay_sumamt` = {fen(s.medfee_sumamt)} − "
        f"{fen(fund)} = {fen(s.psn_part_amt)}.",
        f"`psn_cash_pay = psn_part_amt − acct_pay` = {fen(s.psn_part_amt)} − "
        f"{fen(s.acct_pay)} = {fen(cash)}: own-pay {fen(own)} + over-limit "
        f"{fen(s.overlmt_selfpay)} + pre-self-pay {fen(s.preselfpay_amt)} + the part of `S` "
        f"no fund paid {fen(S - fund)} − what the account paid {fen(s.acct_pay)}.",
        f"`balc = balance − acct_pay` = {fen(s.balc)}.",
    ]


def _result_rows(s: Split) -> list[tuple[str, str, str]]:
    return [(f"`{f}`", fen(getattr(s, f)), yuan(getattr(s, f))) for f in RESULT_FIELDS]


def _after(
    params: PolicyParams, ex: Example, snapshot: Snapshot, request: SettlementRequest, s: Split
) -> list[str]:
    """What the settlement leaves in the year, and a repeat of it when the policy refuses it."""
    year = apply_delta(snapshot.year, s.year_delta)
    changed = [
        f"`{name}` {fen(v)}" for name, v in msgspec.structs.asdict(s.year_delta).items() if v
    ]
    out = ["Year-to-date state added: " + (", ".join(changed) if changed else "nothing") + "."]
    try:
        settle(params, msgspec.structs.replace(snapshot, year=year), request)
    except PolicyRefusal as refusal:
        out += ["", f"The same claim again that year is refused: `{refusal.code}`."]
    return [*out, ""]


def _examples(params: PolicyParams) -> list[str]:
    out = _table(
        ("item", "class", "selfpay_prop", "max_price", "work_injury"),
        [
            (
                f"`{item.code}`",
                f"`{item.chrgitm_lv}`",
                "" if item.selfpay_prop is None else str(item.selfpay_prop),
                "" if item.max_price is None else fen(item.max_price),
                "yes" if item.work_injury else "",
            )
            for item in EXAMPLE_CATALOG.values()
        ],
    )
    out.append("")
    for ex in EXAMPLES:
        out += _example(params, ex)
    while out and out[-1] == "":
        out.pop()
    return out


# --- lines with a decimal price and count ---------------------------------------------------

COUNT_PLACES = len(str(E4)) - 1  # a count in 10^-4 units: 4 decimals
PRICE_PLACES = COUNT_PLACES + 2  # a price in 10^-4 fen: 6 decimals of a yuan
AMOUNT_PLACES = 2  # the declared amount: whole fen

# (item, pric yuan, cnt, det_item_fee_sumamt yuan), as the national interface sends them.
DECIMAL_EXAMPLES: tuple[tuple[str, str, str, str], ...] = (
    ("A-AMOX", "12.35", "0.5", "6.18"),
    ("B-STENT", "0.123456", "100", "12.35"),
    ("B-CEF", "20.123456", "2.5", "50.31"),
    ("C-VIT", "20.00", "0.25", "5.00"),
    ("B-CEF", "25.00", "4", "100.00"),
)
DECIMAL_MISMATCH = ("B-CEF", "20.123456", "2.5", "50.30")
DECIMAL_SCHEME = "310"


def _exact(text: str, places: int) -> int:
    """A decimal written out (``12.35``) times 10^places, exactly; never a float."""
    scaled = Fraction(text) * 10**places
    if scaled.denominator != 1:
        raise ValueError(f"{text} has more than {places} decimals")
    return int(scaled)


def decimal_line(code: str, pric: str, cnt: str, sumamt: str) -> DecimalLine:
    return DecimalLine(
        code=code,
        price_e4=_exact(pric, PRICE_PLACES),
        count_e4=_exact(cnt, COUNT_PLACES),
        total=_exact(sumamt, AMOUNT_PLACES),
    )


def _r(amount: Fraction) -> int:
    """``r(x)`` as the document states it: half a fen and more up, less down."""
    return math.floor(amount + Fraction(1, 2))


def _fen_exact(amount: Fraction) -> str:
    """An exact amount of fen, with as many decimals as it has (at most 8)."""
    scaled = amount * 10**8
    if scaled.denominator != 1:
        raise ValueError(f"{amount} fen has more than 8 decimals")
    whole, part = divmod(int(scaled), 10**8)
    digits = f"{part:08d}".rstrip("0")
    return f"{whole:,}.{digits}" if digits else f"{whole:,}"


def _decimal_row(params: PolicyParams, example: tuple[str, str, str, str]) -> tuple[str, ...]:
    code, pric, cnt, sumamt = example
    item = EXAMPLE_CATALOG[code]
    got: LineSplit = line_result(params, DECIMAL_SCHEME, OUTPATIENT, decimal_line(*example), item)
    amount = Fraction(pric) * Fraction(cnt) * 100
    total = _same("total", _r(amount), got.total)
    _same("det_item_fee_sumamt", _exact(sumamt, AMOUNT_PLACES), total)
    over, over_text = 0, "no `max_price`"
    if item.max_price is not None:
        excess = max(Fraction(0), Fraction(pric) * 100 - item.max_price) * Fraction(cnt)
        over = min(total, _r(excess))
        over_text = f"{_fen_exact(excess)} → {fen(over)}"
    _same("over", over, got.over)
    base = total - over
    own, pre = 0, 0
    match params.line_treatment[DECIMAL_SCHEME][item.chrgitm_lv]:
        case "full_own_pay":
            own = base
        case "pre_self_pay":
            prop = params.default_selfpay_prop if item.selfpay_prop is None else item.selfpay_prop
            pre = pct(base, prop)
    _same("fulamt_ownpay", own, got.fulamt_ownpay)
    _same("preselfpay", pre, got.preselfpay)
    _same("inscp", base - own - pre, got.inscp)
    facts = [f"class `{item.chrgitm_lv}`"]
    if item.selfpay_prop is not None:
        facts.append(f"selfpay_prop {item.selfpay_prop}")
    if item.max_price is not None:
        facts.append(f"max_price {fen(item.max_price)}")
    return (
        f"`{code}` ({', '.join(facts)})",
        f"{pric} × {cnt}",
        f"{_fen_exact(amount)} → {fen(total)}",
        over_text,
        fen(base),
        fen(got.fulamt_ownpay),
        fen(got.preselfpay),
        fen(got.inscp),
    )


def _decimal_lines(params: PolicyParams) -> list[str]:
    out = [
        f"- `pric`, the price in yuan, has at most {PRICE_PLACES} decimals: the engine holds it "
        f"as an integer number of 1/{E4:,} fen (`price_e4`).",
        f"- `cnt`, the count, has at most {COUNT_PLACES} decimals: an integer number of "
        f"1/{E4:,} units (`count_e4`).",
        f"- `det_item_fee_sumamt`, the line's amount the facility declares, has at most "
        f"{AMOUNT_PLACES} decimals: whole fen (`total`).",
        "- `r(x)` rounds an exact amount of fen to a whole fen, half a fen up.",
        "",
        "The lines below are split for scheme "
        f"`{DECIMAL_SCHEME}` (`pric × cnt` in yuan; amounts in fen):",
        "",
    ]
    out += _table(
        (
            "line",
            "pric × cnt",
            "`r(pric × cnt × 100)` = total",
            "over: `r(excess × cnt)`",
            "base",
            "own-pay",
            "pre-self-pay",
            "in scope",
        ),
        [_decimal_row(params, example) for example in DECIMAL_EXAMPLES],
    )
    code, pric, cnt, sumamt = DECIMAL_MISMATCH
    try:
        line_result(
            params,
            DECIMAL_SCHEME,
            OUTPATIENT,
            decimal_line(*DECIMAL_MISMATCH),
            EXAMPLE_CATALOG[code],
        )
    except PolicyRefusal as refusal:
        message = f"`{refusal.code}`: {refusal.message}"
    else:
        raise StepMismatch(f"{DECIMAL_MISMATCH} is not refused")
    out += [
        "",
        f"The same `{code}` line declared as {sumamt} yuan is refused, "
        f"since {_fen_exact(Fraction(pric) * Fraction(cnt) * 100)} fen rounds to "
        f"{fen(_r(Fraction(pric) * Fraction(cnt) * 100))}: {message}.",
    ]
    return out


# --- the document -------------------------------------------------------------------------

RENDERERS: dict[str, Callable[[PolicyParams], list[str]]] = {
    "codes": _codes,
    "ratings": _ratings,
    "amount-limits": _amount_limits,
    "line-treatment": _line_treatment,
    "decimal-lines": _decimal_lines,
    "employee": _employee,
    "resident": _resident,
    "maternity": _maternity,
    "supervision": _supervision,
    "examples": _examples,
}


def render_blocks(params: PolicyParams) -> dict[str, str]:
    """Each generated block's text, markers included."""
    return {
        name: "\n".join([BEGIN.format(name=name), *render(params), END.format(name=name)])
        for name, render in RENDERERS.items()
    }


def blocks_in(document: str) -> list[str]:
    """The names of the generated blocks in ``document``, in order."""
    return [m["name"] for m in _BLOCK.finditer(document)]


def rewrite(document: str, params: PolicyParams) -> str:
    """``document`` with every generated block rendered afresh from ``params``."""
    blocks = render_blocks(params)
    found = blocks_in(document)
    if sorted(found) != sorted(blocks):
        raise ValueError(f"the document's generated blocks are {found}, expected {list(blocks)}")
    return _BLOCK.sub(lambda m: blocks[m["name"]], document)


def prose(document: str) -> str:
    """``document`` without its generated blocks: the part written by hand."""
    return _BLOCK.sub("", document)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cardsvc.settlement.policydoc",
        description="Rewrite the generated blocks of docs/policy.md from the policy file.",
    )
    parser.add_argument("document", nargs="?", type=Path, default=DOCUMENT)
    parser.add_argument("--version", default=CURRENT_POLICY_VERSION, help="policy version")
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    text = args.document.read_text(encoding="utf-8")
    fresh = rewrite(text, load_params(args.version))
    if fresh == text:
        return 0
    if args.check:
        print(f"{args.document}: generated blocks are stale; run {parser.prog}", file=sys.stderr)
        return 1
    args.document.write_text(fresh, encoding="utf-8")
    print(f"{args.document}: generated blocks rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
