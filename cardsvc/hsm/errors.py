"""Errors of the HSM client::

    CardsvcError
    ├── ServiceUnavailable (503)
    │   ├── HsmUnavailable   HSM_UNAVAILABLE  down, unreachable, too slow, connection lost,
    │   │                                     or an HSM whose certificate does not verify
    │   └── HsmError         HSM_ERROR        any other non-ok status, or an unreadable answer
    ├── BusinessRuleViolation (422)
    │   └── HsmRegionNotProvisioned  REGION_NOT_PROVISIONED   status 21: no issuer keys
    └── Conflict (409)
        └── HsmKeyUsageRefused       TERMINAL_REKEY_REQUIRED  status 22: not a counter's key
    HsmRejected                               status 01: a cryptogram did not verify

``HsmRejected`` is deliberately not a ``CardsvcError``: what a failed verification means
(bad terminal sign-in, bad card) is the calling service's decision.
"""

from __future__ import annotations

from cardsvc.errors import BusinessRuleViolation, Conflict, ServiceUnavailable
from hsmlink.protocol import Status


class HsmUnavailable(ServiceUnavailable):
    default_code = "HSM_UNAVAILABLE"


class HsmError(ServiceUnavailable):
    default_code = "HSM_ERROR"


class HsmRegionNotProvisioned(BusinessRuleViolation):
    """PB for a region the HSM has no issuer keys for (they are provisioned offline)."""

    default_code = "REGION_NOT_PROVISIONED"


class HsmKeyUsageRefused(Conflict):
    """PB under a terminal key the HSM does not know to be a counter's."""

    default_code = "TERMINAL_REKEY_REQUIRED"


class HsmRejected(Exception):
    """The HSM answered, and the answer is "does not verify"."""

    def __init__(self, status: Status) -> None:
        super().__init__(f"HSM verification failed (status {status.value})")
        self.status = status
