"""Real-time fund-supervision rules, pure: given what the person did lately, which flags a
new settlement raises. Flags are stored for supervisors; they never refuse a settlement."""

from __future__ import annotations

from typing import Any

import msgspec

from cardsvc.settlement.params import SupervisionRules

__all__ = ["FLAG_RULES", "Flag", "RecentActivity", "SupervisionRules", "flags_for"]

# The thresholds are the policy file's (``supervision``), read as ``SupervisionRules``.
FLAG_RULES = ("PHARMACY_FREQUENCY", "LARGE_CLAIM", "CARD_AT_TWO_FACILITIES")


class RecentActivity(msgspec.Struct, frozen=True, kw_only=True):
    """The person's other non-reversed settlements, as counted before this one."""

    pharmacy_purchases_today: int
    other_facility_recently: str | None  # a facility code, if any


class Flag(msgspec.Struct, frozen=True):
    rule: str
    details: dict[str, Any]


def flags_for(
    rules: SupervisionRules, *, at_pharmacy: bool, medfee_sumamt: int, recent: RecentActivity
) -> list[Flag]:
    flags = []
    purchases = recent.pharmacy_purchases_today + (1 if at_pharmacy else 0)
    if at_pharmacy and purchases > rules.pharmacy_purchases_per_day:
        flags.append(Flag("PHARMACY_FREQUENCY", {"purchases_today": purchases}))
    if medfee_sumamt > rules.large_claim_fen:
        flags.append(
            Flag(
                "LARGE_CLAIM",
                {"medfee_sumamt": medfee_sumamt, "threshold_fen": rules.large_claim_fen},
            )
        )
    if recent.other_facility_recently is not None:
        flags.append(
            Flag(
                "CARD_AT_TWO_FACILITIES",
                {
                    "other_fixmedins_code": recent.other_facility_recently,
                    "window_s": rules.other_facility_window_s,
                },
            )
        )
    return flags
