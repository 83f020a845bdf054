"""Errors of the HSM client::

    CardsvcError
    └── ServiceUnavailable (503)
        ├── HsmUnavailable   HSM_UNAVAILABLE  down, unreachable, too slow, connection lost
        └── HsmError         HSM_ERROR        any other non-ok status, or an unreadable answer
    HsmRejected                               status 01: a cryptogram did not verify

``HsmRejected`` is deliberately not a ``CardsvcError``: what a failed verification means
(bad terminal sign-in, bad card) is the calling service's decision.
"""

from __future__ import annotations

from cardsvc.errors import ServiceUnavailable
from hsm_stub.protocol import Status


class HsmUnavailable(ServiceUnavailable):
    default_code = "HSM_UNAVAILABLE"


class HsmError(ServiceUnavailable):
    default_code = "HSM_ERROR"


class HsmRejected(Exception):
    """The HSM answered, and the answer is "does not verify"."""

    def __init__(self, status: Status) -> None:
        super().__init__(f"HSM verification failed (status {status.value})")
        self.status = status
