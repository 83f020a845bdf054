"""What the audit log records of a gateway message's sender, beside the actor
(``gateway:<paasid>``): the HIS operator and the message. Every writing transaction adds
``operator(call)`` to its audit entry's data."""

from __future__ import annotations

from cardsvc.national.registry import Call


def operator(call: Call) -> dict[str, str]:
    return {
        "opter": call.opter,
        "opter_name": call.opter_name,
        "opter_type": call.opter_type,
        "msgid": call.msgid,
        "infno": call.infno,
    }
