"""Protection of personal data and service secrets at rest, under the service data key.

Sub-keys are derived from the one data key (HKDF-SHA256, one label each) so that the
encryption key, the lookup-hash key, the card-token key and the key check value are
independent. Encryption is
SM4-GCM with a random 12-byte nonce, stored as ``nonce ‖ ciphertext ‖ tag``; the AAD binds a
ciphertext to its row (e.g. the psn_no) so it cannot be moved to another.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cardcrypto.profile import SealedBlobError, sm4_gcm_open, sm4_gcm_seal


class DecryptionError(Exception):
    """A ciphertext did not authenticate: wrong key, wrong row, or tampered."""


CHECK_VALUE_LABEL = b"cardsvc data key check value"
CHECK_VALUE_BYTES = 6


def derive_key(data_key: bytes, label: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive(data_key)


def key_check_value(data_key: bytes) -> str:
    """12 hex characters that tell data keys apart. HKDF under a label of its own: one-way,
    and independent of every sub-key that protects data, so it reveals nothing of them."""
    return derive_key(data_key, CHECK_VALUE_LABEL, CHECK_VALUE_BYTES).hex()


class DataProtector:
    def __init__(self, data_key: bytes) -> None:
        self._enc_key = derive_key(data_key, b"cardsvc pii enc", 16)
        self._hash_key = derive_key(data_key, b"cardsvc pii lookup")

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        return sm4_gcm_seal(self._enc_key, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        try:
            return sm4_gcm_open(self._enc_key, bytes(blob), aad)
        except SealedBlobError:
            raise DecryptionError("ciphertext did not authenticate") from None

    def lookup_hash(self, value: str) -> bytes:
        """Keyed hash for equality look-ups without storing the value."""
        return hmac.new(self._hash_key, value.encode(), hashlib.sha256).digest()
