"""The card state machine, pure (docs/architecture.md, data model)::

issued → active → loss_reported ⇄ active
active | loss_reported → replaced
any state but cancelled → cancelled
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Final

from cardsvc.errors import BusinessRuleViolation, Conflict


class CardStatus(StrEnum):
    ISSUED = "issued"
    ACTIVE = "active"
    LOSS_REPORTED = "loss_reported"
    REPLACED = "replaced"
    CANCELLED = "cancelled"


class CardAction(StrEnum):
    ACTIVATE = "activate"
    REPORT_LOSS = "report-loss"
    CANCEL_LOSS = "cancel-loss"
    REPLACE = "replace"
    CANCEL = "cancel"


LIVE: Final = frozenset({CardStatus.ISSUED, CardStatus.ACTIVE, CardStatus.LOSS_REPORTED})

_TRANSITIONS: Final[dict[CardAction, tuple[frozenset[CardStatus], CardStatus]]] = {
    CardAction.ACTIVATE: (frozenset({CardStatus.ISSUED}), CardStatus.ACTIVE),
    CardAction.REPORT_LOSS: (frozenset({CardStatus.ACTIVE}), CardStatus.LOSS_REPORTED),
    CardAction.CANCEL_LOSS: (frozenset({CardStatus.LOSS_REPORTED}), CardStatus.ACTIVE),
    CardAction.REPLACE: (
        frozenset({CardStatus.ACTIVE, CardStatus.LOSS_REPORTED}),
        CardStatus.REPLACED,
    ),
    CardAction.CANCEL: (frozenset(CardStatus) - {CardStatus.CANCELLED}, CardStatus.CANCELLED),
}


class IllegalCardTransition(Conflict):
    default_code = "CARD_STATE"


def next_status(current: CardStatus, action: CardAction) -> CardStatus:
    allowed_from, target = _TRANSITIONS[action]
    if current not in allowed_from:
        raise IllegalCardTransition(
            f"cannot {action} a card that is {current}",
            details={"status": str(current), "action": str(action)},
        )
    return target


def expired(expiry_date: dt.date, on: dt.date) -> bool:
    """A card is valid up to and including its expiry date (EF05 record ``06``), a business
    date (Asia/Shanghai): it expires at the start of the next day."""
    return on > expiry_date


def expired_message(expiry_date: dt.date) -> str:
    return f"card expired on {expiry_date.isoformat()}: a counter can issue a new card"


def check_not_expired(expiry_date: dt.date, on: dt.date) -> None:
    if expired(expiry_date, on):
        raise BusinessRuleViolation(
            expired_message(expiry_date),
            code="CARD_EXPIRED",
            details={"expiry_date": expiry_date.isoformat()},
        )


def check_pin_unblockable(status: str, expiry_date: dt.date, on: dt.date) -> None:
    """Only an active card that has not expired gets a new PIN: a card reported lost may be
    in a finder's hands, and a replaced, cancelled or expired one should be replaced."""
    if status != CardStatus.ACTIVE:
        raise BusinessRuleViolation(
            f"card is {status}: only an active card's PIN can be unblocked",
            code="CARD_NOT_ACTIVE",
            details={"status": status},
        )
    check_not_expired(expiry_date, on)
