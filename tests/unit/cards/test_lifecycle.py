from __future__ import annotations

import datetime as dt
import itertools

import pytest

from cardsvc.cards.lifecycle import CardAction as A
from cardsvc.cards.lifecycle import CardStatus as S
from cardsvc.cards.lifecycle import (
    IllegalCardTransition,
    check_not_expired,
    check_pin_unblockable,
    expired,
    next_status,
)
from cardsvc.errors import BusinessRuleViolation

LEGAL = {
    (S.ISSUED, A.ACTIVATE): S.ACTIVE,
    (S.ACTIVE, A.REPORT_LOSS): S.LOSS_REPORTED,
    (S.LOSS_REPORTED, A.CANCEL_LOSS): S.ACTIVE,
    (S.ACTIVE, A.REPLACE): S.REPLACED,
    (S.LOSS_REPORTED, A.REPLACE): S.REPLACED,
    (S.ISSUED, A.CANCEL): S.CANCELLED,
    (S.ACTIVE, A.CANCEL): S.CANCELLED,
    (S.LOSS_REPORTED, A.CANCEL): S.CANCELLED,
    (S.REPLACED, A.CANCEL): S.CANCELLED,
}


@pytest.mark.parametrize(("status", "action"), list(itertools.product(S, A)))
def test_every_pair(status: S, action: A):
    if (status, action) in LEGAL:
        assert next_status(status, action) is LEGAL[(status, action)]
    else:
        with pytest.raises(IllegalCardTransition) as caught:
            next_status(status, action)
        assert caught.value.code == "CARD_STATE"
        assert caught.value.status == 409
        assert caught.value.details == {"status": status.value, "action": action.value}


EXPIRY = dt.date(2030, 6, 30)


@pytest.mark.parametrize(
    ("on", "is_expired"),
    [
        (dt.date(2030, 6, 29), False),
        (EXPIRY, False),  # valid through its expiry date
        (dt.date(2030, 7, 1), True),
        (dt.date(2031, 1, 1), True),
    ],
)
def test_a_card_is_valid_through_its_expiry_date(on: dt.date, is_expired: bool):
    assert expired(EXPIRY, on) is is_expired
    if is_expired:
        with pytest.raises(BusinessRuleViolation) as caught:
            check_not_expired(EXPIRY, on)
        assert caught.value.code == "CARD_EXPIRED"
        assert caught.value.details == {"expiry_date": "2030-06-30"}
    else:
        check_not_expired(EXPIRY, on)


@pytest.mark.parametrize(
    ("status", "on", "code"),
    [
        (S.ACTIVE, EXPIRY, None),
        (S.ACTIVE, dt.date(2030, 7, 1), "CARD_EXPIRED"),
        (S.LOSS_REPORTED, EXPIRY, "CARD_NOT_ACTIVE"),  # may be in a finder's hands
        (S.ISSUED, EXPIRY, "CARD_NOT_ACTIVE"),
        (S.REPLACED, EXPIRY, "CARD_NOT_ACTIVE"),
        (S.CANCELLED, EXPIRY, "CARD_NOT_ACTIVE"),
    ],
)
def test_only_an_active_unexpired_card_gets_a_new_pin(status: S, on: dt.date, code: str | None):
    if code is None:
        check_pin_unblockable(status, EXPIRY, on)
        return
    with pytest.raises(BusinessRuleViolation) as caught:
        check_pin_unblockable(status, EXPIRY, on)
    assert caught.value.code == code
