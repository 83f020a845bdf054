"""A card's security behaviour in memory: PIN try counter, INTERNAL AUTHENTICATE that
refuses K_txn until VERIFY succeeded in this power session, and the issuer-authorised PIN
unblock (docs/protocol.md, card profile):

- ``get_challenge``: the card's random, remembered for one RESET RETRY COUNTER;
- ``reset_retry_counter``: checks the issuer's MAC over the command header and that
  challenge (used up by any attempt, right or wrong), resets the try counter and opens the
  window for one CHANGE REFERENCE DATA;
- ``change_pin``: sets the new PIN, accepted only as the very next command after a valid
  reset (``other_command`` closes the window; so does a power cycle).

The virtual PC/SC card (``cardsvc.vcard``) answers VERIFY and INTERNAL AUTHENTICATE with
this class, persisting ``tries_left`` after each VERIFY; the load harness and tests use it
directly.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable

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
        self,
        k_auth: bytes,
        k_txn: bytes,
        pin: str,
        *,
        tries_left: int = PIN_TRIES,
        card_sn: str | None = None,
    ) -> None:
        self._keys = {profile.KEY_REF_AUTH: k_auth, profile.KEY_REF_TXN: k_txn}
        self._pin = pin
        self.tries_left = tries_left
        self._pin_verified = False
        # Without its serial number a card cannot derive K_unblock: it refuses the unblock.
        self._k_unblock = None if card_sn is None else profile.pin_unblock_key(k_txn, card_sn)
        self._challenge: bytes | None = None
        self._unblock_window = False

    @property
    def pin(self) -> str:
        return self._pin

    @property
    def pin_verified(self) -> bool:
        return self._pin_verified

    def power_cycle(self) -> None:
        self._pin_verified = False
        self._challenge, self._unblock_window = None, False

    def other_command(self) -> None:
        """Any command but CHANGE REFERENCE DATA closes the window a reset opened."""
        self._unblock_window = False

    def get_challenge(
        self, length: int = profile.CARD_CHALLENGE_LEN, random: Callable[[int], bytes] = os.urandom
    ) -> bytes:
        self._challenge = random(length)
        return self._challenge

    def reset_retry_counter(self, header: bytes, data: bytes) -> None:
        """RESET RETRY COUNTER under secure messaging: ``data`` is ``8E 08 <MAC>``."""
        challenge, self._challenge = self._challenge, None  # single use, right or wrong
        if self._k_unblock is None:
            raise CardRefused(cardprofile.SW_REFERENCE_NOT_FOUND, "no unblock key")
        if len(data) != 2 + profile.UNBLOCK_MAC_LEN or data[:2] != bytes(
            [profile.SM_TAG_MAC, profile.UNBLOCK_MAC_LEN]
        ):
            raise CardRefused(cardprofile.SW_SM_DATA_INCORRECT, "secure messaging data incorrect")
        if challenge is None or len(challenge) != profile.CARD_CHALLENGE_LEN:
            raise CardRefused(cardprofile.SW_SECURITY_NOT_SATISFIED, "GET CHALLENGE first")
        expected = profile.pin_unblock_mac(self._k_unblock, challenge)
        if header != profile.PIN_UNBLOCK_HEADER or not hmac.compare_digest(expected, data[2:]):
            raise CardRefused(cardprofile.SW_SECURITY_NOT_SATISFIED, "unblock MAC not valid")
        self.tries_left, self._pin_verified, self._unblock_window = PIN_TRIES, False, True

    def change_pin(self, pin: str) -> None:
        """CHANGE REFERENCE DATA without the old PIN: only right after a valid reset."""
        if not self._unblock_window:
            raise CardRefused(
                cardprofile.SW_SECURITY_NOT_SATISFIED, "only right after RESET RETRY COUNTER"
            )
        self._pin, self.tries_left, self._unblock_window = pin, PIN_TRIES, False

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
