from __future__ import annotations

import itertools

import pytest

from cardsvc.cards.lifecycle import CardAction as A
from cardsvc.cards.lifecycle import CardStatus as S
from cardsvc.cards.lifecycle import IllegalCardTransition, next_status

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
