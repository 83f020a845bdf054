"""The cardsvc crypto profile (docs/protocol.md, with test vectors): pure functions, no IO.

Independent clients implement the same profile byte for byte, so every function here is a
direct transcription of docs/protocol.md; the unit tests pin each one with fixed vectors.

- Keys are 16-byte SM4 keys; card serial numbers (``card_sn``) are 32 lowercase hex chars.
- ``diversify``: ``SM4-ECB(MK, D ‖ (D XOR ff×8))`` with ``D = bytes.fromhex(card_sn)[8:16]``.
- Card cryptogram: ``SM4-ECB(K, R)`` over a 16-byte challenge.
- Terminal sign-in: ``CMAC(K_term, Rs ‖ Rt)`` from the terminal, ``CMAC(K_term, Rt ‖ Rs)`` from
  the service, and a 32-byte session key from SP 800-108 counter-mode KDF with SM4-CMAC.
- Personalisation blob: ``hex(nonce ‖ ct ‖ tag)`` of ``K_auth ‖ K_txn`` under SM4-GCM, AAD the
  ASCII ``card_sn``.
- Request signature: hex HMAC-SHA256 over the canonical request.
- PIN unblock: a per-card key ``K_unblock`` derived from ``K_txn`` with SP 800-108 and
  HMAC-SHA256 (never with SM4, which the card answers for anyone with INTERNAL AUTHENTICATE),
  and the issuer's MAC over RESET RETRY COUNTER and the card's own challenge.

Malformed inputs raise ``ValueError``; a blob that fails to open raises ``SealedBlobError``
(a ``ValueError`` too).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import cmac, hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.kbkdf import (
    KBKDFCMAC,
    KBKDFHMAC,
    CounterLocation,
    Mode,
)

KEY_LEN = 16
CHALLENGE_LEN = 16
SESSION_KEY_LEN = 32
GCM_NONCE_LEN = 12
GCM_TAG_LEN = 16
# INTERNAL AUTHENTICATE key references: 1 = K_auth (identification), 2 = K_txn (after PIN).
KEY_REF_AUTH = 1
KEY_REF_TXN = 2
SESSION_KDF_LABEL = b"cardsvc session"
# PIN unblock (RESET RETRY COUNTER under secure messaging): the command header with CLA 0C
# (ISO 7816-4 secure messaging, header authenticated), P1 03 (no resetting code, no new
# PIN in the command: the MAC is the authorisation), P2 00 (the one PIN).
UNBLOCK_KDF_LABEL = b"cardsvc pin unblock"
PIN_UNBLOCK_HEADER = bytes.fromhex("0c2c0300")
CARD_CHALLENGE_LEN = 8  # GET CHALLENGE with Le 08
UNBLOCK_MAC_LEN = 8
SM_TAG_MAC = 0x8E  # ISO 7816-4 secure messaging: cryptographic checksum

_CARD_SN = re.compile(r"[0-9a-f]{32}")
_SEALED_CARD_KEYS_LEN = GCM_NONCE_LEN + 2 * KEY_LEN + GCM_TAG_LEN


class SealedBlobError(ValueError):
    """A sealed blob is malformed, or fails authentication (wrong key, AAD or tampering)."""


def _require_len(name: str, value: bytes, length: int) -> None:
    if len(value) != length:
        raise ValueError(f"{name} must be {length} bytes, got {len(value)}")


def _card_sn_bytes(card_sn: str) -> bytes:
    # Lowercase only: the ASCII card_sn is GCM AAD, so "AB" and "ab" must not both be accepted.
    if not _CARD_SN.fullmatch(card_sn):
        raise ValueError("card_sn must be 32 lowercase hex characters")
    return bytes.fromhex(card_sn)


def _sm4_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    _require_len("key", key, KEY_LEN)
    # ECB is what the profile specifies: single blocks (diversification, cryptograms, KCV).
    encryptor = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()  # noqa: S305
    return encryptor.update(data) + encryptor.finalize()


def diversify(master_key: bytes, card_sn: str) -> bytes:
    """Card key from an issuer master key: ``SM4-ECB(MK, D ‖ (D XOR ff×8))``, 16 bytes."""
    d = _card_sn_bytes(card_sn)[8:16]
    return _sm4_ecb_encrypt(master_key, d + bytes(b ^ 0xFF for b in d))


def card_cryptogram(card_key: bytes, challenge: bytes) -> bytes:
    """The card's INTERNAL AUTHENTICATE response: ``SM4-ECB(K, R)``."""
    _require_len("challenge", challenge, CHALLENGE_LEN)
    return _sm4_ecb_encrypt(card_key, challenge)


def sm4_cmac(key: bytes, data: bytes) -> bytes:
    """CMAC (NIST SP 800-38B) over SM4, 16 bytes."""
    _require_len("key", key, KEY_LEN)
    mac = cmac.CMAC(algorithms.SM4(key))
    mac.update(data)
    return mac.finalize()


def _check_randoms(rs: bytes, rt: bytes) -> None:
    _require_len("rs", rs, CHALLENGE_LEN)
    _require_len("rt", rt, CHALLENGE_LEN)


def terminal_cryptogram(k_term: bytes, rs: bytes, rt: bytes) -> bytes:
    """What the terminal proves sign-in with: ``CMAC(K_term, Rs ‖ Rt)``."""
    _check_randoms(rs, rt)
    return sm4_cmac(k_term, rs + rt)


def server_cryptogram(k_term: bytes, rs: bytes, rt: bytes) -> bytes:
    """What the service proves itself with: ``CMAC(K_term, Rt ‖ Rs)``."""
    _check_randoms(rs, rt)
    return sm4_cmac(k_term, rt + rs)


def derive_session_key(k_term: bytes, rs: bytes, rt: bytes) -> bytes:
    """32-byte session key: SP 800-108 counter-mode KDF with SM4-CMAC, context ``Rs ‖ Rt``."""
    _require_len("k_term", k_term, KEY_LEN)
    _check_randoms(rs, rt)
    kdf = KBKDFCMAC(
        algorithm=algorithms.SM4,
        mode=Mode.CounterMode,
        length=SESSION_KEY_LEN,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=SESSION_KDF_LABEL,
        context=rs + rt,
        fixed=None,
    )
    return kdf.derive(k_term)


def sm4_gcm_seal(key: bytes, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
    """SM4-GCM encrypt: ``nonce ‖ ciphertext ‖ tag`` (12-byte nonce, random unless given)."""
    _require_len("key", key, KEY_LEN)
    nonce = os.urandom(GCM_NONCE_LEN) if nonce is None else nonce
    _require_len("nonce", nonce, GCM_NONCE_LEN)
    encryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(aad)  # AAD must precede update()
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()
    return nonce + ciphertext + encryptor.tag


def sm4_gcm_open(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Inverse of ``sm4_gcm_seal``; raises ``SealedBlobError`` if it does not authenticate."""
    _require_len("key", key, KEY_LEN)
    if len(sealed) < GCM_NONCE_LEN + GCM_TAG_LEN:
        raise SealedBlobError("sealed blob is too short")
    nonce, body = sealed[:GCM_NONCE_LEN], sealed[GCM_NONCE_LEN:]
    ciphertext, tag = body[:-GCM_TAG_LEN], body[-GCM_TAG_LEN:]
    decryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag)).decryptor()
    decryptor.authenticate_additional_data(aad)
    plaintext = decryptor.update(ciphertext)
    try:
        return plaintext + decryptor.finalize()
    except InvalidTag:
        raise SealedBlobError("sealed blob failed authentication") from None


def seal_card_keys(
    k_term: bytes, card_sn: str, k_auth: bytes, k_txn: bytes, nonce: bytes | None = None
) -> str:
    """The personalisation blob: ``hex(nonce ‖ ct ‖ tag)`` of ``K_auth ‖ K_txn``."""
    _card_sn_bytes(card_sn)
    _require_len("k_auth", k_auth, KEY_LEN)
    _require_len("k_txn", k_txn, KEY_LEN)
    return sm4_gcm_seal(k_term, k_auth + k_txn, card_sn.encode("ascii"), nonce).hex()


def unseal_card_keys(k_term: bytes, card_sn: str, blob_hex: str) -> tuple[bytes, bytes]:
    """Open a personalisation blob into ``(K_auth, K_txn)``; ``SealedBlobError`` if bad."""
    _card_sn_bytes(card_sn)
    try:
        sealed = bytes.fromhex(blob_hex)
    except ValueError:
        raise SealedBlobError("personalisation blob is not hex") from None
    if len(sealed) != _SEALED_CARD_KEYS_LEN:
        raise SealedBlobError(f"personalisation blob must be {_SEALED_CARD_KEYS_LEN} bytes")
    keys = sm4_gcm_open(k_term, sealed, card_sn.encode("ascii"))
    return keys[:KEY_LEN], keys[KEY_LEN:]


def pin_unblock_key(k_txn: bytes, card_sn: str) -> bytes:
    """``K_unblock``: SP 800-108 counter-mode KDF with HMAC-SHA256 keyed by ``K_txn``, label
    ``cardsvc pin unblock``, context the 16 bytes of ``card_sn``; 16 bytes.

    Not an SM4 function of a card key on purpose: the card encrypts any 16 bytes under
    ``K_auth`` for anyone holding it (INTERNAL AUTHENTICATE 01), and under ``K_txn`` after
    VERIFY, so anything built from SM4 under those keys could be computed with the card alone.
    """
    _require_len("k_txn", k_txn, KEY_LEN)
    kdf = KBKDFHMAC(
        algorithm=hashes.SHA256(),
        mode=Mode.CounterMode,
        length=KEY_LEN,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=UNBLOCK_KDF_LABEL,
        context=_card_sn_bytes(card_sn),
        fixed=None,
    )
    return kdf.derive(k_txn)


def pin_unblock_mac(k_unblock: bytes, card_challenge: bytes) -> bytes:
    """The issuer's MAC: first 8 bytes of ``SM4-CMAC(K_unblock, 0C 2C 03 00 ‖ Rc)``, with
    ``Rc`` the 8 bytes the card answered to GET CHALLENGE (single use on the card)."""
    _require_len("card_challenge", card_challenge, CARD_CHALLENGE_LEN)
    return sm4_cmac(k_unblock, PIN_UNBLOCK_HEADER + card_challenge)[:UNBLOCK_MAC_LEN]


def pin_unblock_command(mac: bytes) -> bytes:
    """RESET RETRY COUNTER under secure messaging: ``0C 2C 03 00 0A 8E 08 <MAC>``."""
    _require_len("mac", mac, UNBLOCK_MAC_LEN)
    data = bytes([SM_TAG_MAC, UNBLOCK_MAC_LEN]) + mac
    return PIN_UNBLOCK_HEADER + bytes([len(data)]) + data


def path_with_query(path: str, query_string: str) -> str:
    """The ``PATH?QUERY`` line of the canonical request: ``?`` only for a non-empty query."""
    return f"{path}?{query_string}" if query_string else path


def canonical_request(method: str, path_qs: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nhex(SHA-256(body))`` as UTF-8."""
    fields = (method.upper(), path_qs, timestamp, nonce)
    # A newline inside a field would let two different requests share one canonical form.
    if any("\n" in field for field in fields):
        raise ValueError("canonical request fields must not contain newlines")
    return "\n".join((*fields, hashlib.sha256(body).hexdigest())).encode("utf-8")


def request_signature(
    session_key: bytes, method: str, path_qs: str, timestamp: str, nonce: str, body: bytes
) -> str:
    """``X-Signature``: hex HMAC-SHA256(session key, canonical request)."""
    _require_len("session_key", session_key, SESSION_KEY_LEN)
    message = canonical_request(method, path_qs, timestamp, nonce, body)
    return hmac.new(session_key, message, hashlib.sha256).hexdigest()


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def signatures_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two hex signatures (any str, never raises)."""
    # compare_digest refuses non-ASCII str; header values are attacker-controlled, so compare bytes.
    return hmac.compare_digest(_utf8(a), _utf8(b))


def key_check_value(key: bytes) -> str:
    """KCV: the first 3 bytes of ``SM4-ECB(key, 0×16)`` as 6 lowercase hex chars."""
    return _sm4_ecb_encrypt(key, bytes(16))[:3].hex()
