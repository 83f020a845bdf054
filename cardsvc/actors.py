"""Who did something, as the records of an operator's action keep it (credit-rating
history, handled flags): the operator's id and display name beside the audit actor."""

from __future__ import annotations

from cardsvc.web.caller import Caller


def operator_of(caller: Caller) -> tuple[str | None, str | None]:
    """The operator's id and display name; ``(None, None)`` for a caller that is no
    operator (the administrator token)."""
    operator_id: str | None = getattr(caller, "operator_id", None)
    operator_name: str | None = getattr(caller, "operator_name", None)
    return operator_id, operator_name
