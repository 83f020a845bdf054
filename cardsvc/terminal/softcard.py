"""A card's security behaviour in memory: PIN try counter, and INTERNAL AUTHENTICATE that
refuses K_txn until VERIFY succeeded in this power session (DESIGN.md, Card profile).

The virtual PC/SC card wraps this in APDUs; the load harness and tests use it directly.
"""

from __future__ import annotations

import hmac

from cardsvc.crypto import profile

PIN_TRIES = 3


class CardRefused(Exception):
    """The card answered with an error status word."""

    def __init__(self, sw: int, message: str) -> None:
        super().__init__(f"{sw:04X} {message}")
        self.sw = sw


class SoftCard:
    def __init__(self, k_auth: bytes, k_txn: bytes, pin: str) -> None:
        self._keys = {profile.KEY_REF_AUTH: k_auth, profile.KEY_REF_TXN: k_txn}
        self._pin = pin
        self.tries_left = PIN_TRIES
        self._pin_verified = False

    def power_cycle(self) -> None:
        self._pin_verified = False

    def verify(self, pin: str) -> None:
        if self.tries_left == 0:
            raise CardRefused(0x6983, "PIN blocked")
        if hmac.compare_digest(pin.encode(), self._pin.encode()):
            self.tries_left, self._pin_verified = PIN_TRIES, True
            return
        self.tries_left -= 1
        self._pin_verified = False
        if self.tries_left == 0:
            raise CardRefused(0x6983, "PIN blocked")
        raise CardRefused(0x63C0 | self.tries_left, f"wrong PIN, {self.tries_left} tries left")

    def internal_authenticate(self, key_ref: int, challenge: bytes) -> bytes:
        if key_ref not in self._keys:
            raise CardRefused(0x6A88, "key reference not found")
        if key_ref == profile.KEY_REF_TXN and not self._pin_verified:
            raise CardRefused(0x6982, "security status not satisfied: VERIFY first")
        return profile.card_cryptogram(self._keys[key_ref], challenge)
