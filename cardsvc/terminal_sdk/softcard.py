"""A card's security behaviour in memory: PIN try counter, and INTERNAL AUTHENTICATE that
refuses K_txn until VERIFY succeeded in this power session (docs/protocol.md, card profile).

The virtual PC/SC card (``cardsvc.vcard``) answers VERIFY and INTERNAL AUTHENTICATE with
this class, persisting ``tries_left`` after each VERIFY; the load harness and tests use it
directly.
"""

from __future__ import annotations

import hmac

from cardcrypto import profile
from cardsvc.terminal_sdk import cardprofile

PIN_TRIES = 3


class CardRefused(Exception):
    """The card answered with an error status word."""

    def __init__(self, sw: int, message: str) -> None:
        super().__init__(f"{sw:04X} {message}")
        self.sw = sw


class SoftCard:
    def __init__(
        self, k_auth: bytes, k_txn: bytes, pin: str, *, tries_left: int = PIN_TRIES
    ) -> None:
        self._keys = {profile.KEY_REF_AUTH: k_auth, profile.KEY_REF_TXN: k_txn}
        self._pin = pin
        self.tries_left = tries_left
        self._pin_verified = False

    @property
    def pin_verified(self) -> bool:
        return self._pin_verified

    def power_cycle(self) -> None:
        self._pin_verified = False

    def verify(self, pin: str) -> None:
        if self.tries_left == 0:
            raise CardRefused(cardprofile.SW_PIN_BLOCKED, "PIN blocked")
        if hmac.compare_digest(pin.encode(), self._pin.encode()):
            self.tries_left, self._pin_verified = PIN_TRIES, True
            return
        self.tries_left -= 1
        self._pin_verified = False
        if self.tries_left == 0:
            raise CardRefused(cardprofile.SW_PIN_BLOCKED, "PIN blocked")
        raise CardRefused(0x63C0 | self.tries_left, f"wrong PIN, {self.tries_left} tries left")

    def internal_authenticate(self, key_ref: int, challenge: bytes) -> bytes:
        if key_ref not in self._keys:
            raise CardRefused(cardprofile.SW_REFERENCE_NOT_FOUND, "key reference not found")
        if key_ref == profile.KEY_REF_TXN:
            self._require_pin()
        return profile.card_cryptogram(self._keys[key_ref], challenge)

    def _require_pin(self) -> None:
        # A blocked PIN is named as such: the holder must go to a counter, not retry.
        if self.tries_left == 0:
            raise CardRefused(cardprofile.SW_PIN_BLOCKED, "PIN blocked")
        if not self._pin_verified:
            raise CardRefused(
                cardprofile.SW_SECURITY_NOT_SATISFIED, "security status not satisfied: VERIFY first"
            )
