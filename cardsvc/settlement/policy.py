"""The benefit policy engine: (policy parameters, person state, facility, fee lines) -> split.

Pure: no IO, no clock, no database. The service gathers a :class:`Snapshot` inside the
settlement's transaction, calls :func:`settle`, and stores the :class:`Split` together with
its ``year_delta``; a reversal applies ``apply_delta(year, split.year_delta, -1)``.

Every figure comes from :class:`~cardsvc.settlement.params.PolicyParams`. Money is integer
fen; the roundings are :func:`pct` and, for a line with a decimal price or count,
:func:`round_e8`. Names follow the national 2206/2207 ``setlinfo``.

A fee line is a :class:`FeeLine` (the native API: whole fen, whole units) or a
:class:`DecimalLine` (the national interface: a price in 10^-4 fen, a count in 10^-4 units
and the declared amount in fen). Both are read through the same three numbers
(``price_e4``, ``count_e4``, ``total``) by one rule, :func:`decompose_line`; a
:class:`FeeLine` gives them exactly (``unit_price x 10^4``, ``quantity x 10^4``,
``unit_price x quantity``), so it splits as it always has.

Order of refusals (first failure wins; each is a :class:`PolicyRefusal`)::

    FEE_AMOUNT_MISMATCH     a line's declared amount is not price x count rounded to the fen
    AMOUNT_LIMIT_EXCEEDED   a line or the total above the policy's amount limits
    CARD_NOT_ACTIVE         card status is not active
    CARD_EXPIRED            the settlement date is after the card's expiry date (reading 13)
    INSURANCE_NOT_ACTIVE    no active enrolment in the insutype, or psn_type does not fit it
    FACILITY_SUSPENDED      facility not active, or rated D
    NO_AGREEMENT            facility holds no agreement for the insutype
    MED_TYPE_NOT_ALLOWED    insutype / med_type / facility type not in the table
    DELIVERY_TYPE_REQUIRED  52 without delivery_type (reading 1 below)
    INJURY_CASE_INVALID     410 without an approved, current case of this person
    UNKNOWN_ITEM            line codes missing from the catalog (details: sorted codes)
    MATERNITY_LIMIT         a second 52 delivery in the year

Readings of the policy
----------------------
Where the policy's text leaves room, these readings are taken (docs/policy.md states the rules
with them); each keeps every Step 3 identity
(``medfee = fulamt_ownpay + overlmt + preselfpay + inscp``, ``psn_part = medfee - fund_sum``,
``psn_cash = psn_part - acct_pay``, ``balc = balance - acct_pay``) true and nothing negative.

1. ``DELIVERY_TYPE_REQUIRED`` is checked right after ``MED_TYPE_NOT_ALLOWED``: it is a fault
   of the request's shape for an allowed 52, so it precedes the checks of referenced data.
   ``delivery_type`` on any other med_type is ignored.
2. ``MATERNITY_LIMIT`` is a Step 2 rule, so it comes after every Eligibility check (after
   ``UNKNOWN_ITEM``), still before any arithmetic. The limit is ``deliveries_per_year`` (1).
3. A psn_type that does not fit the scheme is ``INSURANCE_NOT_ACTIVE`` (the person cannot be
   insured under it). 410 and 510 take in_service and retired, as the registry does.
4. A facility rated D is ``FACILITY_SUSPENDED`` even when its status is active; any status
   other than active is suspended.
5. ``hifp_pay`` is the basic medical pooled fund (310100 / 390100) only. For 410 and 510 it
   is 0 and the scheme's fund appears in ``setldetail`` and ``fund_pay_sumamt``;
   ``act_pay_dedc`` and ``pool_prop_selfpay`` are 0 for 410, 510 and 310 ``41``. The part
   of ``S`` the maternity fund leaves (above the quota or the prenatal limit) is therefore
   only in ``psn_part_amt`` / ``psn_cash_pay``.
6. "Already has a non-reversed 310 inpatient settlement this year" is
   ``year.inpatient_310 > stay.settled_this_year``: a 310 ``21`` settlement of another
   stay, whatever its amount (every 310 ``21`` settlement adds one to ``inpatient_310``; a
   settlement that is a stay of its own has an empty ``stay``, so there it is
   ``inpatient_310 > 0``).
7. The inpatient ratio cap ("max 95") bounds ratio + bonus for every psn_type. The 310
   outpatient ratio + bonus has no cap in the policy; the parameter file is refused if it
   could exceed 100.
8. 310 ``11``: the account's first draw ``a1`` comes out of in-scope before the segment, so
   there ``hifp_pay + pool_prop_selfpay + act_pay_dedc = S - a1``, not ``S``. The identity
   ``hifp_pay + pool_prop_selfpay + act_pay_dedc = inscp_scp_amt`` holds for 310 ``21`` and
   for 390 ``11`` / ``21``.
9. 390 ``11`` fund payments count toward the 390 annual cap (``hifp_390``, "all 390
   hifp_pay") as well as the outpatient limit (``outpatient_fund_390``); at levels 2/3 both
   deltas are 0.
10. 51 prenatal: ``min(S, max(0, limit - paid))``, so a year already at the limit gives 0,
    never a negative fund.
11. Over-limit is split off every line first, whatever the scheme or class (also 410 and
    class C); pre-self-pay is rounded per line and then summed.
12. The personal account is never used for 390, 410 and 510, whatever ``acct_used_flag``
    says; ``balc`` is then the balance unchanged.
13. The policy's eligibility 1 ("card status active") covers an expired card: an active card
    whose expiry date (EF05 ``06``) is before the settlement's business date is refused as
    ``CARD_EXPIRED``, right after the status check (``cards.lifecycle.expired``: a card is
    valid through its expiry date). A snapshot without the date (``None``) is not checked.
13. The injury case is the one ``injury_case_id`` names: it must exist, belong to this
    person, be ``approved``, match the id, and cover the settlement date (both ends included).
14. A 310/390 hospital settlement needs the facility's level; a hospital without one is a
    registry fault (the database forbids it), raised as ``ValueError``, not a refusal.
15. ``AMOUNT_LIMIT_EXCEEDED`` (from the policy file's ``amount_limits``) comes
    first of all (with a line's own amount, reading 16): it is a fault of the request
    alone, whoever presents it. A line's unit
    price, quantity and amount (``unit_price x quantity``, before over-limit) and the
    settlement's ``medfee_sumamt`` are each bounded; the error names the limit in yuan.
    A decimal line is held to the same limits, exactly (its price and count compared in
    10^-4, its amount being its declared ``total``).
16. A line with a decimal price or count (the national interface's lines): ``r(x)`` rounds
    an amount of 10^-8 fen half up to a fen (:func:`round_e8`). Its declared ``total`` must
    be ``r(price_e4 x count_e4)``, else ``FEE_AMOUNT_MISMATCH`` naming the line; the lines
    are checked one by one, each before its amount limits, so a line that contradicts
    itself is named before any limit is measured on its amount. ``over =
    min(total, r(max(0, price_e4 - max_price x 10^4) x count_e4))``; ``base = total - over``
    and the rest is as for any line (pre-self-pay rounded per line by :func:`pct`).
17. :func:`line_result` is Step 1 of one line on its own (a fee-detail upload's answer): the
    same checks of the line (amount, then the per-line limits) and the same
    :func:`decompose_line`; a settlement of those lines later gives the same split per line.
    ``LineSplit.selfpay_prop`` is the percent of the base the person pays before any fund
    (0 in scope, the item's proportion for pre-self-pay, 100 for full own-pay).
18. The deductible is "per admission": a stay settled in parts (the national interface's
    mid-stay settlements, then the final ones) takes it once. ``Snapshot.stay`` holds what
    the stay's earlier non-reversed settlements took (the caller reads it with the
    snapshot; it is empty for the native API, whose every settlement is a stay of its own,
    so those results are unchanged). A part pays ``min(S, max(0, D - stay.act_pay_dedc))``
    of the deductible; the pooled fund pays ``min(R, max(0, pct(stay R, ratio) -
    stay.fund_pay_sumamt), cap_left)``, ``stay R`` being ``stay.inscp_scp_amt -
    stay.act_pay_dedc + R``: the percentage is rounded once over the stay, so the parts
    together give the person and the fund exactly what one settlement of the same lines
    would (the account's draws add up the same way). A 52 delivery stay likewise has one
    quota and counts as one delivery: ``MATERNITY_LIMIT`` counts the deliveries of other
    stays (``deliveries_510 - stay.settled_this_year``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import msgspec

from cardsvc.cards.lifecycle import expired, expired_message
from cardsvc.errors import BusinessRuleViolation
from cardsvc.money import yuan
from cardsvc.settlement.params import AmountLimits, LineTreatment, PolicyParams, SchemeRules

Amount = Annotated[int, msgspec.Meta(ge=0)]
DeliveryType = Literal["normal", "cesarean"]

# National med_type codes (not policy figures: which ones a scheme allows is in the params).
OUTPATIENT = "11"
INPATIENT = "21"
PHARMACY_PURCHASE = "41"
PRENATAL = "51"
DELIVERY = "52"

ACTIVE = "active"
APPROVED = "approved"


# --- inputs ----------------------------------------------------------------------------


# A decimal price is in 10^-4 fen and a decimal count in 10^-4 units: E4 of them make one.
E4 = 10_000
_E8 = E4 * E4  # price_e4 x count_e4 is in 10^-8 fen
_HALF_E8 = _E8 // 2


class FeeLine(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A line of the native API: a unit price in whole fen, a whole quantity."""

    code: str
    unit_price: Amount
    quantity: Annotated[int, msgspec.Meta(ge=1)]

    @property
    def price_e4(self) -> int:
        return self.unit_price * E4

    @property
    def count_e4(self) -> int:
        return self.quantity * E4

    @property
    def total(self) -> int:
        return self.unit_price * self.quantity


class DecimalLine(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A line of the national interface: ``pric`` yuan with up to 6 decimals is ``price_e4``
    (10^-4 fen), ``cnt`` with up to 4 decimals is ``count_e4`` (10^-4 units), and
    ``det_item_fee_sumamt`` is ``total`` (fen), which must be ``r(price_e4 x count_e4)``
    (``cardsvc.national.units`` converts exactly)."""

    code: str
    price_e4: Amount
    count_e4: Annotated[int, msgspec.Meta(ge=1)]
    total: Amount


# Either kind of line; the engine reads both through price_e4, count_e4 and total.
Line = FeeLine | DecimalLine


class CatalogItem(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    code: str
    chrgitm_lv: Literal["A", "B", "C"]
    selfpay_prop: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    max_price: Amount | None = None
    work_injury: bool = False


class FacilityInfo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    fixmedins_code: str
    type: Literal["hospital", "pharmacy"]
    level: str | None
    credit_rating: str
    status: str
    # A frozenset only: msgspec cannot decode a union of two array-like types.
    agreements: frozenset[str]


class Enrolment(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    insutype: str
    begndate: dt.date
    enddate: dt.date | None = None


class InjuryCase(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    case_id: str
    psn_no: str
    status: str
    valid_from: dt.date
    valid_to: dt.date


class YearState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per person per calendar year, over non-reversed settlements only."""

    hifp_310: int = 0
    seg_310: int = 0
    inpatient_310: int = 0
    hifp_390: int = 0
    outpatient_fund_390: int = 0
    prenatal_510: int = 0
    deliveries_510: int = 0


class Stay(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the earlier settlements of the same stay took, over non-reversed ones only (a
    stay settled in parts: mid-stay settlements, then the final ones; reading 18). Empty for
    a settlement that is a stay of its own (the native API's) or the first of its stay."""

    settled_this_year: int = 0  # how many of them fall in this settlement's year
    inscp_scp_amt: int = 0
    act_pay_dedc: int = 0
    fund_pay_sumamt: int = 0


class SettlementRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    insutype: str
    med_type: str
    acct_used_flag: bool = True
    injury_case_id: str | None = None
    delivery_type: DeliveryType | None = None
    lines: tuple[Line, ...]


class Snapshot(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    psn_no: str
    psn_type: str
    card_status: str
    settle_date: dt.date
    balance: Amount
    year: YearState
    enrolments: tuple[Enrolment, ...]
    facility: FacilityInfo
    catalog: Mapping[str, CatalogItem]  # only the items the request names; missing = unknown
    injury_case: InjuryCase | None = None
    card_expiry: dt.date | None = None  # the card's expiry date (EF05 record 06)
    stay: Stay = msgspec.field(default_factory=Stay)  # the stay's earlier parts (reading 18)


# --- output ----------------------------------------------------------------------------


class FundPayment(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    fund_pay_type: str
    fund_payamt: int


class LineSplit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Step 1 of one line, in fen (``total = over + fulamt_ownpay + preselfpay + inscp``)."""

    code: str
    chrgitm_lv: str
    total: int
    over: int
    fulamt_ownpay: int
    preselfpay: int
    inscp: int
    selfpay_prop: int = 0  # percent of the base the person pays first (reading 17)
    max_price: int | None = None  # the item's price ceiling in fen, if it has one


class Split(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    policy_version: str
    medfee_sumamt: int
    fulamt_ownpay_amt: int
    overlmt_selfpay: int
    preselfpay_amt: int
    inscp_scp_amt: int
    act_pay_dedc: int
    hifp_pay: int
    pool_prop_selfpay: int
    acct_pay: int
    fund_pay_sumamt: int
    psn_part_amt: int
    psn_cash_pay: int
    balc: int
    setldetail: tuple[FundPayment, ...]
    review_required: bool
    lines: tuple[LineSplit, ...]
    year_delta: YearState  # what this settlement adds; its reversal subtracts exactly this


# The Step 3 amounts, named alike in the engine's Split, the settlements table, SetlInfo and
# docs/policy.md.
STEP3_AMOUNTS = (
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
)


class PolicyRefusal(BusinessRuleViolation):
    """The policy refuses the settlement; ``code`` names the rule (see the module docstring)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=code, details=details)


def pct(amount: int, percent: int) -> int:
    """``percent`` % of ``amount`` fen, rounded half up."""
    return (amount * percent + 50) // 100


def round_e8(amount_e8: int) -> int:
    """``r(x)``: an amount of 10^-8 fen (a ``price_e4 x count_e4``), >= 0, rounded half up
    to a whole fen."""
    return (amount_e8 + _HALF_E8) // _E8


def apply_delta(year: YearState, delta: YearState, sign: int = 1) -> YearState:
    """The year state after a settlement (``sign=1``) or its reversal (``sign=-1``)."""
    if sign not in (1, -1):
        raise ValueError("sign must be 1 or -1")
    after = {
        name: getattr(year, name) + sign * getattr(delta, name)
        for name in YearState.__struct_fields__
    }
    if any(value < 0 for value in after.values()):
        raise ValueError("a reversal cannot give back more than the year holds")
    return YearState(**after)


# --- eligibility -----------------------------------------------------------------------


def _decimals(scaled: int, places: int) -> str:
    """``scaled`` x 10^-places, written out without trailing zeros: ``5000, 4`` -> ``0.5``."""
    whole, part = divmod(scaled, 10**places)
    digits = f"{part:0{places}d}".rstrip("0")
    return f"{whole}.{digits}" if digits else f"{whole}"


def _money_e4(amount_e4: int) -> str:
    """10^-4 fen as yuan: ``¥1.00`` for whole fen (as :func:`yuan`), else every decimal."""
    if amount_e4 % E4 == 0:
        return yuan(amount_e4 // E4)
    whole, part = divmod(amount_e4, 100 * E4)
    return f"¥{whole:,}.{f'{part:06d}'.rstrip('0')}"


def _over_limit(what: str, limit_name: str, amount: int, limit: int, **where: Any) -> PolicyRefusal:
    return PolicyRefusal(
        "AMOUNT_LIMIT_EXCEEDED",
        f"{what} {yuan(amount)} exceeds the limit of {yuan(limit)}",
        {"limit": limit_name, "limit_fen": limit, "amount_fen": amount, **where},
    )


def _line_name(line: Line, line_no: int | None) -> str:
    return f"line {line_no}" if line_no is not None else f"the line of {line.code}"


def _where(line: Line, line_no: int | None) -> dict[str, Any]:
    return {"code": line.code} if line_no is None else {"line_no": line_no, "code": line.code}


def check_line_amount(line: Line, line_no: int | None = None) -> None:
    """A line's declared amount must be its price x count rounded to the fen (reading 16),
    else ``FEE_AMOUNT_MISMATCH`` naming the line (``line_no``, from 1, when it has one). A
    line built by hand rather than decoded (where its constraints hold) with a count below
    one 10^-4 unit or a negative price or amount is ``AMOUNT_INVALID``."""
    price, count, total = line.price_e4, line.count_e4, line.total  # read once: hot path
    if count < 1 or price < 0 or total < 0:
        raise PolicyRefusal(
            "AMOUNT_INVALID",
            f"{_line_name(line, line_no)}: the count must be above zero, the price and the "
            "amount not below zero",
            _where(line, line_no),
        )
    expected = round_e8(price * count)
    if total != expected:
        raise PolicyRefusal(
            "FEE_AMOUNT_MISMATCH",
            f"{_line_name(line, line_no)}: the amount {yuan(total)} is not the price "
            f"{_money_e4(price)} × the count {_decimals(count, 4)} rounded to the fen, "
            f"{yuan(expected)}",
            {"total_fen": total, "expected_fen": expected, **_where(line, line_no)},
        )


def check_line_limits(limits: AmountLimits, line: Line, line_no: int | None = None) -> None:
    """One line's amount limits (reading 15): its quantity, unit price and amount."""
    if line.count_e4 > limits.quantity * E4:
        raise PolicyRefusal(
            "AMOUNT_LIMIT_EXCEEDED",
            f"{_line_name(line, line_no)}: quantity {_decimals(line.count_e4, 4)} exceeds the "
            f"limit of {limits.quantity}",
            {"limit": "quantity", "limit_quantity": limits.quantity, **_where(line, line_no)},
        )
    if line.price_e4 > limits.unit_price * E4:
        raise _price_over_limit(limits, line, line_no)
    if line.total > limits.line_total:
        raise _over_limit(
            f"{_line_name(line, line_no)}: the line amount",
            "line_total",
            line.total,
            limits.line_total,
            **_where(line, line_no),
        )


def _price_over_limit(limits: AmountLimits, line: Line, line_no: int | None) -> PolicyRefusal:
    what = f"{_line_name(line, line_no)}: the unit price"
    if line.price_e4 % E4 == 0:  # whole fen: as a native line's refusal always read
        return _over_limit(
            what, "unit_price", line.price_e4 // E4, limits.unit_price, **_where(line, line_no)
        )
    return PolicyRefusal(
        "AMOUNT_LIMIT_EXCEEDED",
        f"{what} {_money_e4(line.price_e4)} exceeds the limit of {yuan(limits.unit_price)}",
        {
            "limit": "unit_price",
            "limit_fen": limits.unit_price,
            "amount_e4": line.price_e4,
            **_where(line, line_no),
        },
    )


def check_amounts(params: PolicyParams, lines: tuple[Line, ...]) -> None:
    """Each line's amount and limits, then the settlement's total (readings 15 and 16)."""
    limits = params.amount_limits
    for line_no, line in enumerate(lines, 1):
        check_line_amount(line, line_no)
        check_line_limits(limits, line, line_no)
    total = sum(line.total for line in lines)
    if total > limits.settlement_total:
        raise _over_limit(
            "the settlement's total", "settlement_total", total, limits.settlement_total
        )


def check_eligibility(params: PolicyParams, snapshot: Snapshot, request: SettlementRequest) -> None:
    """Raise the first :class:`PolicyRefusal` that applies, in the documented order."""
    check_amounts(params, request.lines)
    _check_card(snapshot)
    _check_enrolment(params, snapshot, request.insutype)
    _check_facility(params, snapshot.facility, request.insutype)
    _check_med_type(params, snapshot.facility, request)
    _check_delivery_type(request)
    _check_injury_case(params, snapshot, request)
    _check_items(snapshot.catalog, request.lines)
    _check_maternity_limit(params, snapshot.year, snapshot.stay, request)


def check_visit_type(
    params: PolicyParams, facility: FacilityInfo, insutype: str, med_type: str
) -> None:
    """The checks of ``check_eligibility`` that concern the facility and the visit type
    alone (FACILITY_SUSPENDED, NO_AGREEMENT, MED_TYPE_NOT_ALLOWED), in its order: what can
    be said of a visit before anyone has shown who the person is."""
    _check_facility(params, facility, insutype)
    _check_med_type(
        params, facility, SettlementRequest(insutype=insutype, med_type=med_type, lines=())
    )


def _check_card(snapshot: Snapshot) -> None:
    if snapshot.card_status != ACTIVE:
        raise PolicyRefusal(
            "CARD_NOT_ACTIVE",
            f"card is {snapshot.card_status}, not active",
            {"status": snapshot.card_status},
        )
    if snapshot.card_expiry is not None and expired(snapshot.card_expiry, snapshot.settle_date):
        raise PolicyRefusal(
            "CARD_EXPIRED",
            expired_message(snapshot.card_expiry),
            {"expiry_date": snapshot.card_expiry.isoformat()},
        )


def _enrolment_active(enrolment: Enrolment, on: dt.date) -> bool:
    return enrolment.begndate <= on and (enrolment.enddate is None or enrolment.enddate >= on)


def _check_enrolment(params: PolicyParams, snapshot: Snapshot, insutype: str) -> None:
    fits = snapshot.psn_type in params.person_types.get(insutype, frozenset())
    enrolled = any(
        e.insutype == insutype and _enrolment_active(e, snapshot.settle_date)
        for e in snapshot.enrolments
    )
    if not (fits and enrolled):
        raise PolicyRefusal(
            "INSURANCE_NOT_ACTIVE",
            f"no active {insutype} insurance on {snapshot.settle_date.isoformat()}",
            {"insutype": insutype},
        )


def _check_facility(params: PolicyParams, facility: FacilityInfo, insutype: str) -> None:
    if facility.status != ACTIVE or facility.credit_rating in params.facility_ratings.suspended:
        raise PolicyRefusal(
            "FACILITY_SUSPENDED",
            f"facility {facility.fixmedins_code} is suspended",
            {"fixmedins_code": facility.fixmedins_code},
        )
    if insutype not in facility.agreements:
        raise PolicyRefusal(
            "NO_AGREEMENT",
            f"facility {facility.fixmedins_code} has no {insutype} agreement",
            {"fixmedins_code": facility.fixmedins_code, "insutype": insutype},
        )


def _check_med_type(
    params: PolicyParams, facility: FacilityInfo, request: SettlementRequest
) -> None:
    allowed = any(
        row.insutype == request.insutype
        and row.med_type == request.med_type
        and row.facility_type == facility.type
        for row in params.allowed_med_types
    )
    if not allowed:
        raise PolicyRefusal(
            "MED_TYPE_NOT_ALLOWED",
            f"med_type {request.med_type} is not allowed for {request.insutype}"
            f" at a {facility.type}",
            {"insutype": request.insutype, "med_type": request.med_type},
        )


def _check_delivery_type(request: SettlementRequest) -> None:
    if request.med_type == DELIVERY and request.delivery_type is None:
        raise PolicyRefusal("DELIVERY_TYPE_REQUIRED", "a delivery settlement needs delivery_type")


def _injury_case_valid(snapshot: Snapshot, case_id: str | None) -> bool:
    case = snapshot.injury_case
    return (
        case is not None
        and case_id == case.case_id
        and case.psn_no == snapshot.psn_no
        and case.status == APPROVED
        and case.valid_from <= snapshot.settle_date <= case.valid_to
    )


def _check_injury_case(
    params: PolicyParams, snapshot: Snapshot, request: SettlementRequest
) -> None:
    if request.insutype not in params.work_injury_insutypes:
        return
    if not _injury_case_valid(snapshot, request.injury_case_id):
        raise PolicyRefusal(
            "INJURY_CASE_INVALID",
            "no approved work-injury case of this person covers the settlement date",
            {"injury_case_id": request.injury_case_id},
        )


def _check_items(catalog: Mapping[str, CatalogItem], lines: tuple[Line, ...]) -> None:
    unknown = sorted({line.code for line in lines if line.code not in catalog})
    if unknown:
        raise PolicyRefusal(
            "UNKNOWN_ITEM", f"not in the catalog: {', '.join(unknown)}", {"codes": unknown}
        )


def _check_maternity_limit(
    params: PolicyParams, year: YearState, stay: Stay, request: SettlementRequest
) -> None:
    if request.med_type != DELIVERY:
        return
    # A part of a stay is not a further delivery: the stay's own parts are not counted.
    if year.deliveries_510 - stay.settled_this_year >= params.maternity.deliveries_per_year:
        raise PolicyRefusal(
            "MATERNITY_LIMIT",
            "a delivery has already been settled this year",
            {"deliveries": year.deliveries_510},
        )


# --- step 1: fee lines -----------------------------------------------------------------


def _treatment(params: PolicyParams, insutype: str, item: CatalogItem) -> LineTreatment:
    if insutype in params.work_injury_insutypes:
        return "in_scope" if item.work_injury else "full_own_pay"
    return params.line_treatment[insutype][item.chrgitm_lv]


def decompose_line(params: PolicyParams, insutype: str, line: Line, item: CatalogItem) -> LineSplit:
    """Step 1 for one line: over-limit first, then the base by the item's treatment.

    One rule for both kinds of line (reading 16); for a :class:`FeeLine` the rounding is
    exact, so ``over = max(0, unit_price - max_price) x quantity``. The line's amount is
    taken as declared: :func:`check_line_amount` has held it to its price and count."""
    total = line.total
    over = 0
    if item.max_price is not None:
        excess_e4 = max(0, line.price_e4 - item.max_price * E4)
        over = min(total, round_e8(excess_e4 * line.count_e4))
    base = total - over
    own, pre, inscp, prop = 0, 0, 0, 0
    match _treatment(params, insutype, item):
        case "in_scope":
            inscp = base
        case "pre_self_pay":
            prop = params.default_selfpay_prop if item.selfpay_prop is None else item.selfpay_prop
            pre = pct(base, prop)
            inscp = base - pre
        case "full_own_pay":
            own, prop = base, 100
    return LineSplit(
        code=line.code,
        chrgitm_lv=item.chrgitm_lv,
        total=total,
        over=over,
        fulamt_ownpay=own,
        preselfpay=pre,
        inscp=inscp,
        selfpay_prop=prop,
        max_price=item.max_price,
    )


def line_result(
    params: PolicyParams, insutype: str, med_type: str, line: Line, item: CatalogItem
) -> LineSplit:
    """Step 1 of one line on its own, without a settlement (reading 17): what a fee-detail
    upload answers for the line. Refuses the line as a settlement would
    (``FEE_AMOUNT_MISMATCH``, then ``AMOUNT_LIMIT_EXCEEDED``); ``item`` is the catalog entry
    of ``line.code`` (a code missing from the catalog is the caller's ``UNKNOWN_ITEM``).

    ``med_type`` does not change Step 1 under the current rules; it is taken so that the
    callers (the visit's lines) pass everything a settlement of the line would see."""
    del med_type  # Step 1 is the same for every visit type (see above)
    if insutype not in params.scheme_rules:  # a settlement refuses it as MED_TYPE_NOT_ALLOWED
        raise PolicyRefusal(
            "MED_TYPE_NOT_ALLOWED",
            f"insutype {insutype} is not a scheme of policy {params.version}",
            {"insutype": insutype},
        )
    check_line_amount(line)
    check_line_limits(params.amount_limits, line)
    return decompose_line(params, insutype, line, item)


# --- step 2: the funds -----------------------------------------------------------------


class _Claim(msgspec.Struct, frozen=True, kw_only=True):
    """What a scheme's fund rule sees: Step 1's totals and the person's state."""

    in_scope: int  # S
    pre: int
    balance: int
    account_usable: bool
    psn_type: str
    level: str | None
    year: YearState
    delivery_type: DeliveryType | None
    stay: Stay


class _Funds(msgspec.Struct, frozen=True, kw_only=True):
    act_pay_dedc: int = 0
    hifp_pay: int = 0
    pool_prop_selfpay: int = 0
    acct_pay: int = 0
    fund_payamt: int = 0  # the scheme's one fund in setldetail
    year_delta: YearState = msgspec.field(default_factory=YearState)


def _level(claim: _Claim) -> str:
    if claim.level is None:
        raise ValueError("a hospital settlement needs the facility's level")
    return claim.level


def _cap_left(annual_cap: int, paid_this_year: int) -> int:
    return max(0, annual_cap - paid_this_year)


def _stay_part(claim: _Claim, deductible: int, ratio: int, cap_left: int) -> tuple[int, int]:
    """``(act_pay_dedc, hifp_pay)`` of an inpatient settlement that is a part of its stay
    (reading 18): the deductible is the stay's, taken once (this part pays what the earlier
    parts left of ``deductible``), and over the stay the fund pays ``ratio`` % of the stay's
    ``R``, rounded once (this part: that less what the earlier parts' fund paid). For a stay
    settled at once (no earlier part) it is exactly ``min(S, D)`` and
    ``min(pct(R, ratio), cap_left)``."""
    stay = claim.stay
    dedc = min(claim.in_scope, max(0, deductible - stay.act_pay_dedc))
    rest = claim.in_scope - dedc
    stay_rest = stay.inscp_scp_amt - stay.act_pay_dedc + rest
    owed = max(0, pct(stay_rest, ratio) - stay.fund_pay_sumamt)
    return dedc, min(rest, owed, cap_left)  # rest: pct(rest, ratio) <= rest for one part


def _employee_inpatient(params: PolicyParams, claim: _Claim) -> _Funds:
    rules, level = params.employee.inpatient, _level(claim)
    deductible = rules.deductible[level]
    # A further admission this year: a 310 inpatient settlement this year of another stay.
    if claim.year.inpatient_310 > claim.stay.settled_this_year:
        deductible //= rules.repeat_admission_divisor
    ratio = min(rules.ratio[level] + rules.ratio_bonus.get(claim.psn_type, 0), rules.ratio_max)
    cap_left = _cap_left(params.employee.annual_cap, claim.year.hifp_310)
    dedc, hifp = _stay_part(claim, deductible, ratio, cap_left)
    pool = claim.in_scope - dedc - hifp
    acct = min(claim.balance, dedc + pool + claim.pre) if claim.account_usable else 0
    return _Funds(
        act_pay_dedc=dedc,
        hifp_pay=hifp,
        pool_prop_selfpay=pool,
        acct_pay=acct,
        fund_payamt=hifp,
        year_delta=YearState(hifp_310=hifp, inpatient_310=1),
    )


def _employee_outpatient(params: PolicyParams, claim: _Claim) -> _Funds:
    rules, level = params.employee.outpatient, _level(claim)
    # The account pays in-scope first; the annual self-pay segment is taken from the rest.
    a1 = min(claim.balance, claim.in_scope) if claim.account_usable else 0
    rest = claim.in_scope - a1
    threshold = rules.segment_threshold[claim.psn_type]
    seg = min(rest, max(0, threshold - claim.year.seg_310))
    pooled = rest - seg
    ratio = rules.ratio[level] + rules.ratio_bonus.get(claim.psn_type, 0)
    hifp = min(pct(pooled, ratio), _cap_left(params.employee.annual_cap, claim.year.hifp_310))
    # Then the account pays pre-self-pay from what is left of it.
    a2 = min(claim.balance - a1, claim.pre) if claim.account_usable else 0
    return _Funds(
        act_pay_dedc=seg,
        hifp_pay=hifp,
        pool_prop_selfpay=pooled - hifp,
        acct_pay=a1 + a2,
        fund_payamt=hifp,
        year_delta=YearState(hifp_310=hifp, seg_310=seg),
    )


def _employee_pharmacy(params: PolicyParams, claim: _Claim) -> _Funds:
    # No pooled fund at a pharmacy: only the account, for in-scope and pre-self-pay.
    acct = min(claim.balance, claim.in_scope + claim.pre) if claim.account_usable else 0
    return _Funds(acct_pay=acct)


def _resident_inpatient(params: PolicyParams, claim: _Claim) -> _Funds:
    rules, level = params.resident.inpatient, _level(claim)
    dedc, hifp = _stay_part(  # the deductible never halved for residents
        claim,
        rules.deductible[level],
        rules.ratio[level],
        _cap_left(params.resident.annual_cap, claim.year.hifp_390),
    )
    return _Funds(
        act_pay_dedc=dedc,
        hifp_pay=hifp,
        pool_prop_selfpay=claim.in_scope - dedc - hifp,
        fund_payamt=hifp,
        year_delta=YearState(hifp_390=hifp),
    )


def _resident_outpatient(params: PolicyParams, claim: _Claim) -> _Funds:
    rules = params.resident.outpatient
    hifp = 0  # levels outside paying_levels: accepted, all cash
    if _level(claim) in rules.paying_levels:
        hifp = min(
            pct(claim.in_scope, rules.ratio),
            max(0, rules.annual_fund_limit - claim.year.outpatient_fund_390),
            _cap_left(params.resident.annual_cap, claim.year.hifp_390),
        )
    return _Funds(
        hifp_pay=hifp,
        pool_prop_selfpay=claim.in_scope - hifp,
        fund_payamt=hifp,
        year_delta=YearState(hifp_390=hifp, outpatient_fund_390=hifp),
    )


def _work_injury(params: PolicyParams, claim: _Claim) -> _Funds:
    return _Funds(fund_payamt=claim.in_scope)  # all in-scope; no deductible, cap or account


def _maternity_prenatal(params: PolicyParams, claim: _Claim) -> _Funds:
    left = max(0, params.maternity.prenatal_annual_limit - claim.year.prenatal_510)
    fund = min(claim.in_scope, left)
    return _Funds(fund_payamt=fund, year_delta=YearState(prenatal_510=fund))


def _maternity_delivery(params: PolicyParams, claim: _Claim) -> _Funds:
    if claim.delivery_type is None:  # refused by eligibility; kept for the type checker
        raise ValueError("a delivery settlement needs delivery_type")
    # The quota is the delivery's: a part of a stay gets what its earlier parts left of it.
    quota = params.maternity.delivery_quota[claim.delivery_type]
    fund = min(claim.in_scope, max(0, quota - claim.stay.fund_pay_sumamt))
    return _Funds(fund_payamt=fund, year_delta=YearState(deliveries_510=1))


_FundRule = Callable[[PolicyParams, _Claim], _Funds]
# By the scheme's rule set (the policy file's ``scheme_rules`` names it for each insutype).
_FUND_RULES: dict[tuple[SchemeRules, str], _FundRule] = {
    ("employee_medical", INPATIENT): _employee_inpatient,
    ("employee_medical", OUTPATIENT): _employee_outpatient,
    ("employee_medical", PHARMACY_PURCHASE): _employee_pharmacy,
    ("resident_medical", INPATIENT): _resident_inpatient,
    ("resident_medical", OUTPATIENT): _resident_outpatient,
    ("work_injury", INPATIENT): _work_injury,
    ("work_injury", OUTPATIENT): _work_injury,
    ("work_injury", PHARMACY_PURCHASE): _work_injury,
    ("maternity", PRENATAL): _maternity_prenatal,
    ("maternity", DELIVERY): _maternity_delivery,
}


def _fund_rule(params: PolicyParams, insutype: str, med_type: str) -> _FundRule:
    rule = _FUND_RULES.get((params.scheme_rules[insutype], med_type))
    if rule is None:  # the params allow a combination this engine has no rule for
        raise ValueError(f"no fund rule for insutype {insutype} med_type {med_type}")
    return rule


# --- step 3: totals --------------------------------------------------------------------


def settle(params: PolicyParams, snapshot: Snapshot, request: SettlementRequest) -> Split:
    """Check eligibility, then split the fee lines between funds, account and cash."""
    check_eligibility(params, snapshot, request)
    lines = tuple(
        decompose_line(params, request.insutype, line, snapshot.catalog[line.code])
        for line in request.lines
    )
    in_scope = sum(line.inscp for line in lines)
    pre = sum(line.preselfpay for line in lines)
    claim = _Claim(
        in_scope=in_scope,
        pre=pre,
        balance=snapshot.balance,
        account_usable=request.acct_used_flag and request.insutype in params.account_insutypes,
        psn_type=snapshot.psn_type,
        level=snapshot.facility.level,
        year=snapshot.year,
        delivery_type=request.delivery_type,
        stay=snapshot.stay,
    )
    funds = _fund_rule(params, request.insutype, request.med_type)(params, claim)
    return _totals(params, snapshot, request, lines, funds)


def _setldetail(params: PolicyParams, insutype: str, funds: _Funds) -> tuple[FundPayment, ...]:
    if funds.fund_payamt == 0:
        return ()
    return (
        FundPayment(fund_pay_type=params.fund_pay_types[insutype], fund_payamt=funds.fund_payamt),
    )


def _totals(
    params: PolicyParams,
    snapshot: Snapshot,
    request: SettlementRequest,
    lines: tuple[LineSplit, ...],
    funds: _Funds,
) -> Split:
    medfee = sum(line.total for line in lines)
    setldetail = _setldetail(params, request.insutype, funds)
    fund_sum = sum(payment.fund_payamt for payment in setldetail)
    psn_part = medfee - fund_sum
    return Split(
        policy_version=params.version,
        medfee_sumamt=medfee,
        fulamt_ownpay_amt=sum(line.fulamt_ownpay for line in lines),
        overlmt_selfpay=sum(line.over for line in lines),
        preselfpay_amt=sum(line.preselfpay for line in lines),
        inscp_scp_amt=sum(line.inscp for line in lines),
        act_pay_dedc=funds.act_pay_dedc,
        hifp_pay=funds.hifp_pay,
        pool_prop_selfpay=funds.pool_prop_selfpay,
        acct_pay=funds.acct_pay,
        fund_pay_sumamt=fund_sum,
        psn_part_amt=psn_part,
        psn_cash_pay=psn_part - funds.acct_pay,
        balc=snapshot.balance - funds.acct_pay,
        setldetail=setldetail,
        review_required=snapshot.facility.credit_rating in params.facility_ratings.review,
        lines=lines,
        year_delta=funds.year_delta,
    )
