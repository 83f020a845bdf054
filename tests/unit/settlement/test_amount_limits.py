"""The policy file's amount limits (documented reading 15), as a table of requests."""

from __future__ import annotations

import msgspec
import pytest

from cardsvc.money import yuan
from cardsvc.settlement.params import AmountLimits, PolicyParams
from cardsvc.settlement.policy import PolicyRefusal, settle
from tests.unit.settlement import PARAMS, request, snapshot

LIMITS = PARAMS.amount_limits
# Whole lines at the line limit, and what is left up to the settlement limit.
FULL = (("A-AMOX", LIMITS.line_total, 1),) * (LIMITS.settlement_total // LIMITS.line_total)
REST = LIMITS.settlement_total % LIMITS.line_total

# (lines, the limit refused or None)
CASES: list[tuple[tuple[tuple[str, int, int], ...], str | None]] = [
    ((("A-AMOX", LIMITS.unit_price, 1),), None),
    ((("A-AMOX", LIMITS.unit_price + 1, 1),), "unit_price"),
    ((("A-AMOX", 1, LIMITS.quantity),), None),
    ((("A-AMOX", 1, LIMITS.quantity + 1),), "quantity"),
    ((("A-AMOX", LIMITS.line_total // 2, 2),), None),
    ((("A-AMOX", LIMITS.line_total // 2 + 1, 2),), "line_total"),
    ((("A-AMOX", LIMITS.line_total, 1),) * 2, None),
    ((*FULL, ("C-VIT", REST, 1)), None),
    ((*FULL, ("C-VIT", REST + 1, 1)), "settlement_total"),
    # The attack: lines of ~5 x 10^17 fen are refused by the first limit they cross.
    ((("W-SUT", 10_000_000_000, 50_000),), "quantity"),
    ((("W-SUT", 10_000_000_000, 1),), "unit_price"),
]


@pytest.mark.parametrize(("lines", "refused"), CASES)
def test_amount_limits(lines: tuple[tuple[str, int, int], ...], refused: str | None) -> None:
    req = request("310", "21", *lines)
    if refused is None:
        assert settle(PARAMS, snapshot("310"), req).medfee_sumamt == sum(p * q for _, p, q in lines)
        return
    with pytest.raises(PolicyRefusal) as caught:
        settle(PARAMS, snapshot("310"), req)
    assert caught.value.code == "AMOUNT_LIMIT_EXCEEDED" and caught.value.status == 422
    assert caught.value.details["limit"] == refused


def test_the_limit_comes_first_and_is_named_in_yuan() -> None:
    req = request(
        "410",
        "21",
        ("W-SUT", LIMITS.line_total, 1),
        ("W-SUT", LIMITS.line_total, 1),
        ("W-SUT", LIMITS.line_total, 1),
    )
    with pytest.raises(PolicyRefusal) as caught:  # no injury case, card not active: still this
        settle(PARAMS, snapshot("410", card_status="lost"), req)
    assert caught.value.code == "AMOUNT_LIMIT_EXCEEDED"
    assert yuan(LIMITS.settlement_total) in caught.value.message
    assert yuan(LIMITS.settlement_total) == "¥5,000,000.00"


def test_a_policy_file_with_limits_that_do_not_grow_is_refused() -> None:
    with pytest.raises(ValueError, match="must grow"):
        AmountLimits(unit_price=10, quantity=1, line_total=5, settlement_total=100)
    raw = msgspec.json.decode(msgspec.json.encode(PARAMS))
    raw["supervision"]["large_claim_fen"] = LIMITS.settlement_total
    with pytest.raises(msgspec.ValidationError, match="LARGE_CLAIM"):
        msgspec.json.decode(msgspec.json.encode(raw), type=PolicyParams)
