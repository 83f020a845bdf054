"""cardsvc's side of hsm_stub: a pooled, multiplexing client and its errors."""

from cardsvc.hsm.client import GeneratedTerminalKey, HsmClient, TerminalSignInResult
from cardsvc.hsm.errors import (
    HsmError,
    HsmKeyUsageRefused,
    HsmRegionNotProvisioned,
    HsmRejected,
    HsmUnavailable,
)

__all__ = [
    "GeneratedTerminalKey",
    "HsmClient",
    "HsmError",
    "HsmKeyUsageRefused",
    "HsmRegionNotProvisioned",
    "HsmRejected",
    "HsmUnavailable",
    "TerminalSignInResult",
]
