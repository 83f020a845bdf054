"""Protection of personal data and service secrets at rest, under the service data key.

Sub-keys are derived from the one data key (HKDF-SHA256, one label each) so that the
encryption key, the lookup-hash key and the card-token key are independent. Encryption is
SM4-GCM with a random 12-byte nonce, stored as ``nonce ‖ ciphertext ‖ tag``; the AAD binds a
ciphertext to its row (e.g. the psn_no) so it cannot be moved to another.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE = 12
_TAG = 16


class DecryptionError(Exception):
    """A ciphertext did not authenticate: wrong key, wrong row, or tampered."""


def derive_key(data_key: bytes, label: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive(data_key)


class DataProtector:
    def __init__(self, data_key: bytes) -> None:
        self._enc_key = derive_key(data_key, b"cardsvc pii enc", 16)
        self._hash_key = derive_key(data_key, b"cardsvc pii lookup")

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        enc = Cipher(algorithms.SM4(self._enc_key), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        body = enc.update(plaintext) + enc.finalize()
        return nonce + body + enc.tag

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < _NONCE + _TAG:
            raise DecryptionError("ciphertext too short")
        nonce, body, tag = blob[:_NONCE], blob[_NONCE:-_TAG], blob[-_TAG:]
        dec = Cipher(algorithms.SM4(self._enc_key), modes.GCM(nonce, tag)).decryptor()
        dec.authenticate_additional_data(aad)
        try:
            return dec.update(body) + dec.finalize()
        except InvalidTag:
            raise DecryptionError("ciphertext did not authenticate") from None

    def lookup_hash(self, value: str) -> bytes:
        """Keyed hash for equality look-ups without storing the value."""
        return hmac.new(self._hash_key, value.encode(), hashlib.sha256).digest()
