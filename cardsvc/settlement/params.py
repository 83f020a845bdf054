"""Benefit policy parameters, loaded from ``schema/policy/<version>.json``.

Every figure of the policy (docs/policy.md) lives in that file; the engine in
:mod:`cardsvc.settlement.policy` reads them only from :class:`PolicyParams`. A settlement
records the version it was computed under, so a reversal or an audit can reload the same
figures after the policy has moved on.

Tables keyed by facility level must name every level, and tables keyed by item class every
class: a missing key is a broken policy file, refused at load time rather than at the
first settlement that needs it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, get_args

import msgspec

from cardsvc.types import CreditRating, Insutype, PsnType

CURRENT_POLICY_VERSION = "2026.1"
# cardsvc/schema is schema/ (a link in the checkout, package data in an installed wheel).
POLICY_DIR = Path(__file__).resolve().parents[1] / "schema" / "policy"

LEVELS = frozenset({"community", "1", "2", "3"})
ITEM_CLASSES = frozenset({"A", "B", "C"})
_VERSION_PATTERN = re.compile(r"^[0-9]{4}\.[0-9]{1,3}$")

Fen = Annotated[int, msgspec.Meta(ge=0)]
# No policy may let one settlement claim more than this (10^13 fen, 100 billion yuan): with
# it, 9 x 10^5 settlements at the limit still sum inside bigint.
MAX_SETTLEMENT_TOTAL = 10**13
Percent = Annotated[int, msgspec.Meta(ge=0, le=100)]
PerLevel = dict[str, Fen]
# How Step 1 books an item's base amount (after over-limit) for one item class.
LineTreatment = Literal["in_scope", "pre_self_pay", "full_own_pay"]
# Which of the engine's rule sets computes a scheme's fund payment (cardsvc.settlement.policy).
SchemeRules = Literal["employee_medical", "resident_medical", "work_injury", "maternity"]
INSUTYPES = frozenset(get_args(Insutype))
PSN_TYPES = frozenset(get_args(PsnType))
CREDIT_RATINGS = frozenset(get_args(CreditRating))


def _require_keys(table: Mapping[str, object], keys: frozenset[str], what: str) -> None:
    if set(table) != keys:
        raise ValueError(f"{what} must name exactly {sorted(keys)}, got {sorted(table)}")


def _require_within(values: frozenset[str], allowed: frozenset[str], what: str) -> None:
    if not values <= allowed:
        raise ValueError(f"{what} must be among {sorted(allowed)}, got {sorted(values)}")


class AllowedMedType(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One row of the insutype / med_type / facility type table."""

    insutype: str
    med_type: str
    facility_type: Literal["hospital", "pharmacy"]


class FacilityRatings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    suspended: frozenset[str]  # treated as FACILITY_SUSPENDED even when status is active
    review: frozenset[str]  # accepted, but held out of clearing until approved


class EmployeeInpatient(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    deductible: PerLevel
    ratio: dict[str, Percent]
    # Divisor of the deductible once the person has a 310 admission this year.
    repeat_admission_divisor: Annotated[int, msgspec.Meta(ge=1)]
    ratio_bonus: dict[str, Percent]  # by psn_type; absent types get none
    ratio_max: Percent

    def __post_init__(self) -> None:
        _require_keys(self.deductible, LEVELS, "310 inpatient deductible")
        _require_keys(self.ratio, LEVELS, "310 inpatient ratio")


class EmployeeOutpatient(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ratio: dict[str, Percent]
    ratio_bonus: dict[str, Percent]  # by psn_type
    segment_threshold: dict[str, Fen]  # annual self-pay segment T, by psn_type

    def __post_init__(self) -> None:
        _require_keys(self.ratio, LEVELS, "310 outpatient ratio")
        # The policy sets no maximum here; a ratio above 100 would pay more than the claim.
        if max(self.ratio.values()) + max(self.ratio_bonus.values(), default=0) > 100:
            raise ValueError("310 outpatient ratio plus bonus exceeds 100")


class Employee(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    annual_cap: Fen
    inpatient: EmployeeInpatient
    outpatient: EmployeeOutpatient


class ResidentInpatient(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    deductible: PerLevel
    ratio: dict[str, Percent]

    def __post_init__(self) -> None:
        _require_keys(self.deductible, LEVELS, "390 inpatient deductible")
        _require_keys(self.ratio, LEVELS, "390 inpatient ratio")


class ResidentOutpatient(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ratio: Percent
    annual_fund_limit: Fen
    paying_levels: frozenset[str]  # other levels: accepted, fund pays 0


class Resident(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    annual_cap: Fen
    inpatient: ResidentInpatient
    outpatient: ResidentOutpatient


class Maternity(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    prenatal_annual_limit: Fen
    delivery_quota: dict[Literal["normal", "cesarean"], Fen]
    deliveries_per_year: Annotated[int, msgspec.Meta(ge=1)]

    def __post_init__(self) -> None:
        if set(self.delivery_quota) != {"normal", "cesarean"}:
            raise ValueError("delivery_quota must name normal and cesarean")


class AmountLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Hard bounds on what a settlement may claim: above any of them the engine refuses it
    (``AMOUNT_LIMIT_EXCEEDED``). They also keep every sum of settlements far inside bigint
    (at 2026.1's 5 x 10^8 fen, 1.8 x 10^10 settlements), and the largest
    ``settlement_total`` of all policy versions is what clearing, the fund report and
    reconciliation hold an impossible settlement to (one stored before the limits existed;
    ``cardsvc.settlement.fundparts.within_limits``)."""

    unit_price: Annotated[int, msgspec.Meta(gt=0)]  # fen
    quantity: Annotated[int, msgspec.Meta(ge=1)]
    line_total: Annotated[int, msgspec.Meta(gt=0)]  # fen, unit_price x quantity
    settlement_total: Annotated[int, msgspec.Meta(gt=0, le=MAX_SETTLEMENT_TOTAL)]  # fen

    def __post_init__(self) -> None:
        if not self.unit_price <= self.line_total <= self.settlement_total:
            raise ValueError("amount limits must grow: unit_price <= line_total <= settlement")


class SupervisionRules(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Thresholds of the real-time supervision flags (they never refuse a settlement)."""

    pharmacy_purchases_per_day: Annotated[int, msgspec.Meta(ge=1)]  # more are flagged
    large_claim_fen: Fen  # a medfee_sumamt above it is flagged LARGE_CLAIM
    other_facility_window_s: Annotated[int, msgspec.Meta(ge=1)]  # same card, other facility


class PolicyParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: str
    allowed_med_types: tuple[AllowedMedType, ...]
    person_types: dict[str, frozenset[str]]  # insutype -> psn_types that fit the scheme
    scheme_rules: dict[str, SchemeRules]  # insutype -> the engine's rule set for its funds
    account_insutypes: frozenset[str]  # schemes whose settlements may use the account
    fund_pay_types: dict[str, str]  # insutype -> setldetail fund_pay_type
    facility_ratings: FacilityRatings
    line_treatment: dict[str, dict[str, LineTreatment]]  # insutype -> item class -> treatment
    work_injury_insutypes: frozenset[str]  # item class ignored: the work_injury flag decides
    default_selfpay_prop: Percent  # class B items without their own selfpay_prop
    employee: Employee
    resident: Resident
    maternity: Maternity
    amount_limits: AmountLimits
    supervision: SupervisionRules

    def __post_init__(self) -> None:
        self._check_vocabulary()
        if self.supervision.large_claim_fen >= self.amount_limits.settlement_total:
            raise ValueError("the LARGE_CLAIM threshold must lie below the settlement limit")
        for insutype, table in self.line_treatment.items():
            _require_keys(table, ITEM_CLASSES, f"line_treatment[{insutype}]")
        for row in self.allowed_med_types:
            if row.insutype not in self.fund_pay_types:
                raise ValueError(f"insutype {row.insutype} has no fund_pay_type")
            treated = row.insutype in self.line_treatment
            if not treated and row.insutype not in self.work_injury_insutypes:
                raise ValueError(f"insutype {row.insutype} has no line treatment")

    def insutypes_under(self, rules: SchemeRules) -> frozenset[str]:
        """The insutypes whose fund payment the engine computes with ``rules``."""
        return frozenset(i for i, used in self.scheme_rules.items() if used == rules)

    def _check_vocabulary(self) -> None:
        """Every insutype the API accepts has its scheme facts here, and every code named
        here is one the API can carry (``cardsvc.types``): no request meets a missing fact."""
        _require_keys(self.person_types, INSUTYPES, "person_types")
        _require_keys(self.scheme_rules, INSUTYPES, "scheme_rules")
        _require_keys(self.fund_pay_types, INSUTYPES, "fund_pay_types")
        for insutype, psn_types in self.person_types.items():
            _require_within(psn_types, PSN_TYPES, f"person_types[{insutype}]")
        _require_within(self.account_insutypes, INSUTYPES, "account_insutypes")
        if self.work_injury_insutypes != self.insutypes_under("work_injury"):
            raise ValueError("work_injury_insutypes must be the schemes with work_injury rules")
        ratings = self.facility_ratings
        _require_within(ratings.suspended | ratings.review, CREDIT_RATINGS, "facility_ratings")


_decoder = msgspec.json.Decoder(PolicyParams)


@functools.cache
def load_params(version: str) -> PolicyParams:
    """The parameters of one policy version; read once per process."""
    if not _VERSION_PATTERN.fullmatch(version):
        raise ValueError(f"not a policy version: {version!r}")
    params = _decoder.decode((POLICY_DIR / f"{version}.json").read_bytes())
    if params.version != version:
        raise ValueError(f"{version}.json declares version {params.version!r}")
    return params
