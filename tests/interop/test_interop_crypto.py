"""Self-tests of the interop terminal's crypto against docs/protocol.md and public standards."""

from __future__ import annotations

import secrets
from datetime import date

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.interop import terminal as t
from tests.interop.identity import check_digit, is_valid, make_certno


def seal(k_term: bytes, card_sn: str, k_auth: bytes, k_txn: bytes) -> str:
    """The service side of the personalisation blob, as docs/protocol.md describes it."""
    nonce = secrets.token_bytes(12)
    enc = Cipher(algorithms.SM4(k_term), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(card_sn.encode("ascii"))
    ciphertext = enc.update(k_auth + k_txn) + enc.finalize()
    return (nonce + ciphertext + enc.tag).hex()


def test_sm4_gbt32907_vector() -> None:
    key = bytes.fromhex("0123456789abcdeffedcba9876543210")
    assert t.sm4_ecb(key, key).hex() == "681edf34d206965e86b3e94f536e4246"


def test_kcv_is_prefix_of_zero_block_encryption() -> None:
    key = bytes.fromhex("0123456789abcdeffedcba9876543210")
    assert t.kcv(key) == t.sm4_ecb(key, bytes(16)).hex()[:6]
    assert len(t.kcv(key)) == 6


def test_diversification_uses_last_8_bytes_of_card_sn() -> None:
    mk = secrets.token_bytes(16)
    sn = "00112233445566778899aabbccddeeff"
    expected = t.sm4_ecb(mk, bytes.fromhex("8899aabbccddeeff" + "7766554433221100"))
    assert t.diversify(mk, sn) == expected
    assert t.diversify(mk, "ff" * 8 + sn[16:]) == expected  # first 8 bytes ignored


def test_sign_in_cryptograms_are_direction_specific() -> None:
    k, rs, rt = (secrets.token_bytes(16) for _ in range(3))
    assert t.terminal_cryptogram(k, rs, rt) == t.sm4_cmac(k, rs + rt)
    assert t.server_cryptogram(k, rs, rt) == t.sm4_cmac(k, rt + rs)
    assert t.terminal_cryptogram(k, rs, rt) != t.server_cryptogram(k, rs, rt)


def test_session_key_matches_hand_written_sp800_108() -> None:
    """KBKDFCMAC with SM4 equals counter-mode KDF written out by hand:
    K(i) = CMAC(K_term, [i]_4 || label || 0x00 || context || [L=256]_4), i = 1, 2."""
    k, rs, rt = (secrets.token_bytes(16) for _ in range(3))
    fixed = t.SESSION_LABEL + b"\x00" + rs + rt + (256).to_bytes(4, "big")
    manual = b"".join(t.sm4_cmac(k, i.to_bytes(4, "big") + fixed) for i in (1, 2))
    assert t.session_key(k, rs, rt) == manual
    assert len(manual) == 32


def test_string_to_sign_with_and_without_query() -> None:
    body = b'{"a":1}'
    digest = "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"
    assert t.string_to_sign("post", "/v1/cards", "1700000000", "n" * 32, body) == (
        f"POST\n/v1/cards\n1700000000\n{'n' * 32}\n{digest}".encode()
    )
    assert t.string_to_sign("GET", "/v1/x?a=1&b=2", "1", "nonce", b"").split(b"\n")[1] == (
        b"/v1/x?a=1&b=2"
    )
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert t.string_to_sign("GET", "/v1/x", "1", "nonce", b"").endswith(empty.encode())


def test_signature_is_hmac_sha256_hex() -> None:
    key = bytes(32)
    sig = t.sign(key, "GET", "/healthz", "1", "abc", b"")
    assert len(sig) == 64 and sig == sig.lower()
    assert sig != t.sign(key, "GET", "/healthz", "1", "abd", b"")


def test_blob_round_trip_and_tamper() -> None:
    k_term, k_auth, k_txn = (secrets.token_bytes(16) for _ in range(3))
    sn = secrets.token_hex(16)
    blob = seal(k_term, sn, k_auth, k_txn)
    assert len(blob) == 2 * (12 + 32 + 16)
    assert t.unseal_card_keys(k_term, sn, blob) == (k_auth, k_txn)
    with pytest.raises(InvalidTag):
        t.unseal_card_keys(k_term, secrets.token_hex(16), blob)  # AAD binds the card
    flipped = blob[:30] + ("0" if blob[30] != "0" else "1") + blob[31:]
    with pytest.raises(InvalidTag):
        t.unseal_card_keys(k_term, sn, flipped)


def test_emulated_card_requires_pin_for_key_ref_2() -> None:
    k_auth, k_txn, r = (secrets.token_bytes(16) for _ in range(3))
    card = t.EmulatedCard(card_sn="00" * 16, k_auth=k_auth, k_txn=k_txn, pin="123456")
    assert card.internal_authenticate(1, r) == t.sm4_ecb(k_auth, r)
    with pytest.raises(t.CardError) as err:
        card.internal_authenticate(2, r)
    assert err.value.sw == "6982"
    with pytest.raises(t.CardError) as err:
        card.verify("000000")
    assert err.value.sw == "63C2"
    card.verify("123456")
    assert card.internal_authenticate(2, r) == t.sm4_ecb(k_txn, r)
    card.power_cycle()
    with pytest.raises(t.CardError):
        card.internal_authenticate(2, r)


def test_emulated_card_blocks_after_three_wrong_pins() -> None:
    card = t.EmulatedCard(card_sn="00" * 16, k_auth=bytes(16), k_txn=bytes(16), pin="123456")
    sws = []
    for _ in range(4):
        with pytest.raises(t.CardError) as err:
            card.verify("654321")
        sws.append(err.value.sw)
    assert sws == ["63C2", "63C1", "6983", "6983"]
    with pytest.raises(t.CardError):
        card.verify("123456")


def test_iso7064_check_digit_known_number() -> None:
    assert check_digit("11010519491231002") == "X"
    assert is_valid("11010519491231002X")
    assert not is_valid("110105194912310021")


def test_generated_certno_is_valid_and_gendered() -> None:
    for male in (True, False):
        certno = make_certno("320200", date(1985, 6, 30), male)
        assert is_valid(certno)
        assert certno.startswith("32020019850630")
        assert int(certno[16]) % 2 == (1 if male else 0)
