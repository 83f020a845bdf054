"""An independent, deliberately literal reading of the benefit policy 2026.1 (docs/policy.md).

Written from the policy's text alone: it shares no code with ``cardsvc`` and uses plain dicts,
so the engine (``cardsvc.settlement.policy``) can be checked against it field by field.
Every figure below is copied by hand from the policy's tables, not read from the policy file.

Inputs (all plain dicts):

``state``     the person's account balance and year-to-date totals (``new_state()``);
``person``    ``psn_type``, ``card_status``, ``enrolments`` (list of
              ``{"insutype", "begndate", "enddate"}``), ``injury_cases``
              (``{case_id: {"psn_no", "status", "valid_from", "valid_to"}}``), ``psn_no``;
``facility``  ``type`` (hospital/pharmacy), ``level``, ``credit_rating``, ``status``,
              ``agreements``;
``request``   ``insutype``, ``med_type``, ``date``, ``lines``, optional ``acct_used_flag``,
              ``injury_case_id``, ``delivery_type``, ``catalog``. A line is
              ``(code, unit_price, quantity)`` in whole fen and units, or, as the national
              interface sends it, ``(code, pric, cnt, det_item_fee_sumamt)``: ``Decimal`` yuan
              (up to 6 decimals), count (up to 4) and yuan (up to 2), computed exactly here
              with ``fractions.Fraction``, never a float.

``stay``      the earlier, non-reversed settlements of the same inpatient stay (a stay settled
              in parts: each a ``reference_settle`` result with the ``date`` it was settled
              on added); empty for a stay settled at once, and for everything else.

``reference_settle`` returns every Step 3 field, plus ``review_required``, ``year_change``
(what the settlement adds to the year totals) and ``state_after``; or raises ``RefError``.
``reference_reverse`` gives back exactly what a settlement took.

A stay settled in parts (docs/policy.md, "A stay settled in parts"): the deductible is per
admission, so the stay is settled as if at once, so far, and this part is what that adds to
what the earlier parts took.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

# --- Units and rounding -------------------------------------------------------------------


def pct(x: int, p: int) -> int:
    """The policy: pct(x, p) = (x * p + 50) // 100 (round half up, x >= 0)."""
    assert x >= 0
    return (x * p + 50) // 100


def r(x: Fraction) -> int:
    """The policy's r(x): a non-negative amount in fen rounded half up to a whole fen."""
    assert x >= 0
    return math.floor(x + Fraction(1, 2))


# --- Codes --------------------------------------------------------------------------------

EMPLOYEE = "310"
RESIDENT = "390"
WORK_INJURY = "410"
MATERNITY = "510"

OUTPATIENT = "11"
INPATIENT = "21"
PHARMACY_PURCHASE = "41"
PRENATAL = "51"
DELIVERY = "52"

# (insutype, med_type) -> the facility type where it is allowed.
ALLOWED = {
    ("310", "11"): "hospital",
    ("310", "21"): "hospital",
    ("310", "41"): "pharmacy",
    ("390", "11"): "hospital",
    ("390", "21"): "hospital",
    ("410", "11"): "hospital",
    ("410", "21"): "hospital",
    ("410", "41"): "pharmacy",
    ("510", "51"): "hospital",
    ("510", "52"): "hospital",
}

# Person types per scheme. The policy's text names in_service/retired for 310 and resident for 390;
# the engine's documented reading 3 adds in_service/retired for 410 and 510, and makes a
# psn_type that does not fit the scheme INSURANCE_NOT_ACTIVE.
PSN_TYPES = {
    "310": ("in_service", "retired"),
    "390": ("resident",),
    "410": ("in_service", "retired"),
    "510": ("in_service", "retired"),
}

FUND_PAY_TYPE = {"310": "310100", "390": "390100", "410": "410100", "510": "510100"}

# --- Step 2 parameters --------------------------------------------------------------------

# 310 employee
EMP_INPATIENT_DEDUCTIBLE = {"community": 30000, "1": 30000, "2": 50000, "3": 80000}
EMP_INPATIENT_RATIO = {"community": 90, "1": 90, "2": 85, "3": 80}
EMP_INPATIENT_RETIRED_BONUS = 5
EMP_INPATIENT_RATIO_MAX = 95
EMP_OUTPATIENT_RATIO = {"community": 80, "1": 75, "2": 70, "3": 65}
EMP_OUTPATIENT_RETIRED_BONUS = 10
EMP_SEGMENT_THRESHOLD = {"in_service": 100000, "retired": 70000}
EMP_ANNUAL_CAP = 20000000

# 390 resident
RES_INPATIENT_DEDUCTIBLE = {"community": 20000, "1": 20000, "2": 40000, "3": 60000}
RES_INPATIENT_RATIO = {"community": 80, "1": 80, "2": 70, "3": 60}
RES_ANNUAL_CAP = 15000000
RES_OUTPATIENT_LEVELS = ("community", "1")
RES_OUTPATIENT_RATIO = 50
RES_OUTPATIENT_ANNUAL_FUND = 50000

# 510 maternity
PRENATAL_ANNUAL_FUND = 100000
DELIVERY_QUOTA = {"normal": 300000, "cesarean": 500000}

DEFAULT_SELFPAY_PROP = 10

# Amount limits: not in the policy's text. Copied from schema/policy/2026.1.json (amount_limits);
# the engine's documented reading 15 refuses a request above them before anything else.
LIMIT_UNIT_PRICE = 200_000_000
LIMIT_QUANTITY = 10_000
LIMIT_LINE = 200_000_000
LIMIT_SETTLEMENT = 500_000_000

# --- Catalog: the policy's worked-example catalog plus a few of our own ------------------

CATALOG: dict[str, dict[str, Any]] = {
    "A-AMOX": {"chrgitm_lv": "A"},
    "B-CEF": {"chrgitm_lv": "B", "selfpay_prop": 10, "max_price": 2000},
    "B-STENT": {"chrgitm_lv": "B", "selfpay_prop": 20},
    "C-VIT": {"chrgitm_lv": "C"},
    "W-SUT": {"chrgitm_lv": "A", "work_injury": True},
    # Our own: class B without selfpay_prop (default 10), a priced-capped class A and C,
    # a class-B work-injury item with a cap, and a class-B item whose proportion is odd.
    "REF-B-GAUZE": {"chrgitm_lv": "B"},
    "REF-A-CAP": {"chrgitm_lv": "A", "max_price": 5000},
    "REF-C-MASK": {"chrgitm_lv": "C", "max_price": 1000},
    "REF-W-PLATE": {"chrgitm_lv": "B", "selfpay_prop": 30, "max_price": 80000, "work_injury": True},
    "REF-B-ODD": {"chrgitm_lv": "B", "selfpay_prop": 15, "max_price": 33333},
}


class RefError(Exception):
    def __init__(self, code: str, codes: list[str] | None = None) -> None:
        super().__init__(code, codes)
        self.code = code
        self.codes = codes  # UNKNOWN_ITEM: the unknown item codes (sorted, once each)


YEAR_KEYS = (
    "employee_pooled_paid",  # all 310 hifp_pay of the year
    "employee_segment_paid",  # 310 outpatient self-pay segment
    "employee_inpatient_count",  # non-reversed 310 inpatient settlements
    "resident_pooled_paid",  # all 390 hifp_pay of the year
    "resident_outpatient_fund_paid",  # 390 outpatient fund paid
    "prenatal_fund_paid",  # 510 prenatal fund paid
    "deliveries",  # non-reversed 510 delivery settlements
)


def new_state(balance: int = 0, **year: int) -> dict[str, int]:
    state = {"balance": balance}
    for key in YEAR_KEYS:
        state[key] = year.get(key, 0)
    return state


def _enrolled(person: dict[str, Any], insutype: str, date: dt.date) -> bool:
    for e in person["enrolments"]:
        if e["insutype"] != insutype:
            continue
        if e["begndate"] <= date and (e.get("enddate") is None or date <= e["enddate"]):
            return True
    return False


def line_amounts(item: dict[str, Any], line: tuple) -> tuple[int, int]:
    """Step 1's ``(total, over)`` of one line, in fen, straight from the policy's text.

    An integer line: ``total = unit_price * quantity``,
    ``over = max(0, unit_price - max_price) * quantity``. A decimal line:
    ``total = det_item_fee_sumamt * 100``, which must equal ``r(pric * cnt * 100)`` (else
    FEE_AMOUNT_MISMATCH); ``over = min(total, r(max(0, pric * 100 - max_price) * cnt))``."""
    max_price = item.get("max_price")
    if len(line) == 3:
        _code, unit_price, quantity = line
        over = 0 if max_price is None else max(0, unit_price - max_price) * quantity
        return unit_price * quantity, over
    _code, pric, cnt, _sumamt = line
    total = declared_total(line)
    if max_price is None:
        return total, 0
    return total, min(total, r(max(Fraction(0), Fraction(pric) * 100 - max_price) * Fraction(cnt)))


def declared_total(line: tuple) -> int:
    """A decimal line's ``det_item_fee_sumamt`` in fen, once it is ``r(pric * cnt * 100)``."""
    _code, pric, cnt, sumamt = line
    total = Fraction(sumamt) * 100
    assert total.denominator == 1, "det_item_fee_sumamt has at most 2 decimals"
    if total != r(Fraction(pric) * Fraction(cnt) * 100):
        raise RefError("FEE_AMOUNT_MISMATCH")
    return int(total)


def _line_over_limits(line: tuple) -> bool:
    """A line's unit price (fen), quantity or amount (fen) above the amount limits."""
    if len(line) == 3:
        _code, price, qty = line
        return price > LIMIT_UNIT_PRICE or qty > LIMIT_QUANTITY or price * qty > LIMIT_LINE
    _code, pric, cnt, sumamt = line
    return pric * 100 > LIMIT_UNIT_PRICE or cnt > LIMIT_QUANTITY or sumamt * 100 > LIMIT_LINE


def line_total(line: tuple) -> int:
    if len(line) == 3:
        return int(line[1] * line[2])
    return int(Decimal(line[3]) * 100)


def check_eligibility(
    person: dict[str, Any], facility: dict[str, Any], request: dict[str, Any]
) -> None:
    insutype = request["insutype"]
    med_type = request["med_type"]
    date = request["date"]
    catalog = request.get("catalog", CATALOG)
    # Line by line: a decimal line's declared amount, then the amount limits (see LIMIT_*).
    for line in request["lines"]:
        if len(line) == 4:
            declared_total(line)
        if _line_over_limits(line):
            raise RefError("AMOUNT_LIMIT_EXCEEDED")
    if sum(line_total(line) for line in request["lines"]) > LIMIT_SETTLEMENT:
        raise RefError("AMOUNT_LIMIT_EXCEEDED")
    # 1
    if person["card_status"] != "active":
        raise RefError("CARD_NOT_ACTIVE")
    # 2
    if not _enrolled(person, insutype, date):
        raise RefError("INSURANCE_NOT_ACTIVE")
    if person["psn_type"] not in PSN_TYPES.get(insutype, ()):
        raise RefError("INSURANCE_NOT_ACTIVE")
    # 3
    if facility["status"] != "active" or facility["credit_rating"] == "D":
        raise RefError("FACILITY_SUSPENDED")
    if insutype not in facility["agreements"]:
        raise RefError("NO_AGREEMENT")
    # 4
    if ALLOWED.get((insutype, med_type)) != facility["type"]:
        raise RefError("MED_TYPE_NOT_ALLOWED")
    # Not in the policy's list of checks: a 52 needs delivery_type to pick its quota. The engine's
    # documented reading 1 refuses it here, right after MED_TYPE_NOT_ALLOWED.
    if insutype == MATERNITY and med_type == DELIVERY and request.get("delivery_type") is None:
        raise RefError("DELIVERY_TYPE_REQUIRED")
    # 5
    if insutype == WORK_INJURY:
        case = person["injury_cases"].get(request.get("injury_case_id"))
        if (
            case is None
            or case["psn_no"] != person["psn_no"]
            or case["status"] != "approved"
            or not (case["valid_from"] <= date <= case["valid_to"])
        ):
            raise RefError("INJURY_CASE_INVALID")
    # 6
    unknown = sorted({line[0] for line in request["lines"] if line[0] not in catalog})
    if unknown:
        raise RefError("UNKNOWN_ITEM", unknown)


def decompose(insutype: str, item: dict[str, Any], line: tuple) -> dict:
    total, over = line_amounts(item, line)
    base = total - over
    full = pre = inscp = 0
    cls = item["chrgitm_lv"]
    if insutype in (EMPLOYEE, RESIDENT):
        if cls == "A":
            inscp = base
        elif cls == "B":
            prop = item.get("selfpay_prop")
            if prop is None:
                prop = DEFAULT_SELFPAY_PROP
            pre = pct(base, prop)
            inscp = base - pre
        else:
            full = base
    elif insutype == WORK_INJURY:
        if item.get("work_injury", False):
            inscp = base
        else:
            full = base
    elif insutype == MATERNITY:
        if cls in ("A", "B"):
            inscp = base
        else:
            full = base
    else:  # pragma: no cover - eligibility has refused it
        raise AssertionError(insutype)
    return {"total": total, "over": over, "full": full, "pre": pre, "inscp": inscp}


# Every field of the policy's Step 3, as the reference returns them.
STEP3_FIELDS = (
    "medfee_sumamt",
    "fulamt_ownpay_amt",
    "overlmt_selfpay",
    "preselfpay_amt",
    "inscp_scp_amt",
    "act_pay_dedc",
    "hifp_pay",
    "pool_prop_selfpay",
    "acct_pay",
    "fund_pay_sumamt",
    "psn_part_amt",
    "psn_cash_pay",
    "balc",
    "setldetail",
)


def _stay_so_far(
    S: int, D: int, ratio: int, cap_left: int, stay: tuple[int, int, int]
) -> tuple[int, int]:
    """(act_pay_dedc, hifp_pay) of an inpatient settlement: the stay so far (its earlier
    parts and this one) settled as one, ``min(S, D)`` and ``pct(R, ratio)``, less what the
    earlier parts took; the fund never above this part's R nor the year's cap left. With no
    earlier part it is the policy's ``min(S, D)`` and ``min(pct(R, ratio), cap_left)``."""
    stay_S, stay_dedc, stay_fund = stay  # what the earlier parts had and took
    whole_dedc = min(stay_S + S, D)  # the stay's deductible so far
    dedc = min(S, max(0, whole_dedc - stay_dedc))  # (D may have grown since: never above S)
    R = S - dedc
    whole_R = (stay_S - stay_dedc) + R  # what the stay so far has beyond its deductible
    hifp = max(0, min(pct(whole_R, ratio) - stay_fund, R, cap_left))
    return dedc, hifp


def reference_settle(
    state: dict[str, int],
    person: dict[str, Any],
    facility: dict[str, Any],
    request: dict[str, Any],
    stay: tuple[dict[str, Any], ...] | list[dict[str, Any]] = (),
) -> dict[str, Any]:
    check_eligibility(person, facility, request)
    insutype = request["insutype"]
    med_type = request["med_type"]
    catalog = request.get("catalog", CATALOG)

    # The stay's earlier parts: what they took, and how many of them count in this year.
    stay_S = sum(part["inscp_scp_amt"] for part in stay)
    stay_dedc = sum(part["act_pay_dedc"] for part in stay)
    stay_fund = sum(part["fund_pay_sumamt"] for part in stay)
    stay_this_year = sum(1 for part in stay if part["date"].year == request["date"].year)
    earlier = (stay_S, stay_dedc, stay_fund)

    # MATERNITY_LIMIT (Step 2, 510 delivery): after every eligibility check. A part of the
    # same delivery's stay is not another delivery.
    if insutype == MATERNITY and med_type == DELIVERY and state["deliveries"] - stay_this_year >= 1:
        raise RefError("MATERNITY_LIMIT")

    # Step 1
    medfee = overlmt = fulamt = preself = inscp = 0
    for line in request["lines"]:
        part = decompose(insutype, catalog[line[0]], line)
        medfee += part["total"]
        overlmt += part["over"]
        fulamt += part["full"]
        preself += part["pre"]
        inscp += part["inscp"]
    assert medfee == fulamt + overlmt + preself + inscp

    S = inscp
    pre = preself
    bal = state["balance"]
    acct = bool(request.get("acct_used_flag", True))
    if insutype in (RESIDENT, WORK_INJURY, MATERNITY):
        acct = False
    level = facility.get("level")
    psn_type = person["psn_type"]

    act_pay_dedc = 0
    hifp_pay = 0
    pool_prop_selfpay = 0
    acct_pay = 0
    other_fund = 0  # 410100 / 510100
    change = dict.fromkeys(YEAR_KEYS, 0)

    # Step 2
    if insutype == EMPLOYEE:
        cap_left = max(0, EMP_ANNUAL_CAP - state["employee_pooled_paid"])
        if med_type == INPATIENT:
            D = EMP_INPATIENT_DEDUCTIBLE[level]
            # A further admission: an inpatient settlement this year of another stay.
            if state["employee_inpatient_count"] - stay_this_year > 0:
                D = D // 2
            ratio = EMP_INPATIENT_RATIO[level]
            if psn_type == "retired":
                ratio = min(ratio + EMP_INPATIENT_RETIRED_BONUS, EMP_INPATIENT_RATIO_MAX)
            act_pay_dedc, hifp_pay = _stay_so_far(S, D, ratio, cap_left, earlier)
            R = S - act_pay_dedc
            pool_prop_selfpay = R - hifp_pay
            acct_pay = min(bal, act_pay_dedc + pool_prop_selfpay + pre) if acct else 0
            change["employee_inpatient_count"] = 1
        elif med_type == OUTPATIENT:
            T = EMP_SEGMENT_THRESHOLD[psn_type]
            ratio = EMP_OUTPATIENT_RATIO[level]
            if psn_type == "retired":
                ratio = ratio + EMP_OUTPATIENT_RETIRED_BONUS
            a1 = min(bal, S) if acct else 0
            Q = S - a1
            seg = min(Q, max(0, T - state["employee_segment_paid"]))
            Q2 = Q - seg
            hifp_pay = min(pct(Q2, ratio), cap_left)
            pool_prop_selfpay = Q2 - hifp_pay
            a2 = min(bal - a1, pre) if acct else 0
            acct_pay = a1 + a2
            act_pay_dedc = seg
            change["employee_segment_paid"] = seg
        elif med_type == PHARMACY_PURCHASE:
            acct_pay = min(bal, S + pre) if acct else 0
        change["employee_pooled_paid"] = hifp_pay
    elif insutype == RESIDENT:
        cap_left = max(0, RES_ANNUAL_CAP - state["resident_pooled_paid"])
        if med_type == INPATIENT:
            D = RES_INPATIENT_DEDUCTIBLE[level]
            ratio = RES_INPATIENT_RATIO[level]
            act_pay_dedc, hifp_pay = _stay_so_far(S, D, ratio, cap_left, earlier)
            R = S - act_pay_dedc
            pool_prop_selfpay = R - hifp_pay
        elif med_type == OUTPATIENT:
            if level in RES_OUTPATIENT_LEVELS:
                hifp_pay = min(
                    pct(S, RES_OUTPATIENT_RATIO),
                    max(0, RES_OUTPATIENT_ANNUAL_FUND - state["resident_outpatient_fund_paid"]),
                    cap_left,
                )
            else:
                hifp_pay = 0
            pool_prop_selfpay = S - hifp_pay
            change["resident_outpatient_fund_paid"] = hifp_pay
        change["resident_pooled_paid"] = hifp_pay
    elif insutype == WORK_INJURY:
        other_fund = S
    elif insutype == MATERNITY:
        if med_type == PRENATAL:
            other_fund = min(S, max(0, PRENATAL_ANNUAL_FUND - state["prenatal_fund_paid"]))
            change["prenatal_fund_paid"] = other_fund
        else:
            quota = DELIVERY_QUOTA[request["delivery_type"]]
            # One quota for the delivery: the stay so far, less what its earlier parts got.
            other_fund = min(S, max(0, min(stay_S + S, quota) - stay_fund))
            change["deliveries"] = 1

    # Step 3
    setldetail = []
    if insutype in (EMPLOYEE, RESIDENT):
        if hifp_pay != 0:
            setldetail.append({"fund_pay_type": FUND_PAY_TYPE[insutype], "fund_payamt": hifp_pay})
    elif other_fund != 0:
        setldetail.append({"fund_pay_type": FUND_PAY_TYPE[insutype], "fund_payamt": other_fund})
    fund_pay_sumamt = sum(d["fund_payamt"] for d in setldetail)
    psn_part_amt = medfee - fund_pay_sumamt
    psn_cash_pay = psn_part_amt - acct_pay
    balc = bal - acct_pay

    state_after = dict(state)
    state_after["balance"] = balc
    for key in YEAR_KEYS:
        state_after[key] += change[key]

    return {
        "medfee_sumamt": medfee,
        "fulamt_ownpay_amt": fulamt,
        "overlmt_selfpay": overlmt,
        "preselfpay_amt": preself,
        "inscp_scp_amt": inscp,
        "act_pay_dedc": act_pay_dedc,
        "hifp_pay": hifp_pay,
        "pool_prop_selfpay": pool_prop_selfpay,
        "acct_pay": acct_pay,
        "fund_pay_sumamt": fund_pay_sumamt,
        "psn_part_amt": psn_part_amt,
        "psn_cash_pay": psn_cash_pay,
        "balc": balc,
        "setldetail": setldetail,
        "review_required": facility["credit_rating"] == "C",
        "year_change": change,
        "state_after": state_after,
    }


def reference_reverse(state: dict[str, int], result: dict[str, Any]) -> dict[str, int]:
    """A reversal gives back exactly what its settlement took, account balance included."""
    after = dict(state)
    after["balance"] += result["acct_pay"]
    for key in YEAR_KEYS:
        after[key] -= result["year_change"][key]
    return after
