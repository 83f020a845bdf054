"""The crypto profile pinned by fixed vectors.

Anchors: the GB/T 32907 SM4 block vector and the RFC 8998 SM4-GCM vector. The profile's own
vectors were computed once and written down; where a construction can be rebuilt from the SM4
block cipher alone (CMAC, the SP 800-108 KDF, diversification) the test rebuilds it, to show
the literal is right and to document the exact bytes for independent implementations.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cardcrypto import profile

MASTER_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
CARD_SN = "32020012345678900011223344556677"
CHALLENGE = bytes(range(0x10, 0x20))
K_TERM = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
RS = bytes(range(0x20, 0x30))
RT = bytes(range(0x30, 0x40))
SEAL_NONCE = bytes.fromhex("000102030405060708090a0b")
SESSION_KEY = bytes(range(32))

K_AUTH = bytes.fromhex("77ab85191841f4f7fd38dda10794a31d")  # diversify(MASTER_KEY, CARD_SN)
K_TXN = bytes.fromhex("4f3f563a9e9f61911f0642efa65388a4")  # diversify(K_TERM, CARD_SN)
SEALED = (
    "000102030405060708090a0b"
    "b79741b668113b2c8021ab1c794899b106793e7ef26420043f1982a9c8e5a966"
    "c14389e13da14fff8f4478da5181d144"
)


def sm4_block(key: bytes, block: bytes) -> bytes:
    """The bare SM4 block cipher, pinned by ``test_sm4_block_gbt32907``."""
    encryptor = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def textbook_cmac(key: bytes, message: bytes) -> bytes:
    """NIST SP 800-38B CMAC written out over the SM4 block cipher."""

    def double(block: bytes) -> bytes:
        value = int.from_bytes(block, "big") << 1
        if value >> 128:
            value ^= (1 << 128) | 0x87
        return value.to_bytes(16, "big")

    k1 = double(sm4_block(key, bytes(16)))
    k2 = double(k1)
    blocks = [message[i : i + 16] for i in range(0, len(message), 16)] or [b""]
    last = blocks[-1]
    if len(last) == 16:
        blocks[-1] = xor(last, k1)
    else:
        blocks[-1] = xor(last + b"\x80" + bytes(15 - len(last)), k2)
    state = bytes(16)
    for block in blocks:
        state = sm4_block(key, xor(state, block))
    return state


# --- anchors ---------------------------------------------------------------------------------


def test_sm4_block_gbt32907() -> None:
    key = bytes.fromhex("0123456789abcdeffedcba9876543210")
    assert sm4_block(key, key).hex() == "681edf34d206965e86b3e94f536e4246"
    assert profile.card_cryptogram(key, key).hex() == "681edf34d206965e86b3e94f536e4246"


def test_sm4_gcm_rfc8998() -> None:
    sealed = profile.sm4_gcm_seal(
        key=bytes.fromhex("0123456789abcdeffedcba9876543210"),
        plaintext=bytes.fromhex(
            "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbccccccccccccccccdddddddddddddddd"
            "eeeeeeeeeeeeeeeeffffffffffffffffeeeeeeeeeeeeeeeeaaaaaaaaaaaaaaaa"
        ),
        aad=bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2"),
        nonce=bytes.fromhex("00001234567800000000abcd"),
    )
    assert sealed.hex() == (
        "00001234567800000000abcd"
        "17f399f08c67d5ee19d0dc9969c4bb7d5fd46fd3756489069157b282bb200735"
        "d82710ca5c22f0ccfa7cbf93d496ac15a56834cbcf98c397b4024a2691233b8d"
        "83de3541e4c2b58177e065a9bf7b62ec"
    )


# --- fixed vectors ---------------------------------------------------------------------------

VECTORS: list[tuple[str, Callable[[], bytes | str], str]] = [
    ("diversify", lambda: profile.diversify(MASTER_KEY, CARD_SN), K_AUTH.hex()),
    ("diversify other key", lambda: profile.diversify(K_TERM, CARD_SN), K_TXN.hex()),
    (
        "card cryptogram",
        lambda: profile.card_cryptogram(K_AUTH, CHALLENGE),
        "96d42b867e638f446fbfa7159bf45939",
    ),
    ("cmac empty", lambda: profile.sm4_cmac(K_TERM, b""), "399a9c930964a3d4e38c59da47f0b309"),
    (
        "cmac one block",
        lambda: profile.sm4_cmac(K_TERM, bytes(range(16))),
        "37b58211a0c9b1bf169eccd38e0c0c21",
    ),
    (
        "cmac partial block",
        lambda: profile.sm4_cmac(K_TERM, bytes(range(40))),
        "4cbb29cfa65c775c165fd42312ccbb7f",
    ),
    (
        "cmac four blocks",
        lambda: profile.sm4_cmac(K_TERM, bytes(range(64))),
        "4ada4c1f949002f4a921aff34df71e85",
    ),
    (
        "terminal cryptogram",
        lambda: profile.terminal_cryptogram(K_TERM, RS, RT),
        "964af4833d1b71f248a30b80c7d8c80d",
    ),
    (
        "server cryptogram",
        lambda: profile.server_cryptogram(K_TERM, RS, RT),
        "a344d04db03e460beb9192ae544d20fa",
    ),
    (
        "session key",
        lambda: profile.derive_session_key(K_TERM, RS, RT),
        "00f9c8ad9189bd19aa9bed3169a35e9943d60b9b101454199d8338b9d7a14056",
    ),
    (
        "personalisation blob",
        lambda: profile.seal_card_keys(K_TERM, CARD_SN, K_AUTH, K_TXN, nonce=SEAL_NONCE),
        SEALED,
    ),
    (
        "request signature with query and body",
        lambda: profile.request_signature(
            SESSION_KEY, "post", "/v1/settlements?x=1", "1700000000", "abcdefghijklmnop", b'{"a":1}'
        ),
        "80ba7a92f488861933254e1e543613bf036883cbe4320d4a536029e39ff2651f",
    ),
    (
        "request signature, no query, empty body",
        lambda: profile.request_signature(
            SESSION_KEY, "GET", "/v1/cards/123", "1700000000", "abcdefghijklmnop", b""
        ),
        "377de48876c12f1713d59e690bffb50fa37696d69581cd71288362ecf69208bf",
    ),
    ("kcv", lambda: profile.key_check_value(K_TERM), "09cbe1"),
    ("kcv of the zero key", lambda: profile.key_check_value(bytes(16)), "9f1f7b"),
]


@pytest.mark.parametrize(("name", "compute", "expected"), VECTORS, ids=[v[0] for v in VECTORS])
def test_fixed_vector(name: str, compute: Callable[[], bytes | str], expected: str) -> None:
    result = compute()
    assert (result.hex() if isinstance(result, bytes) else result) == expected


# --- the same values rebuilt from the definitions ---------------------------------------------


def test_diversify_is_ecb_of_d_and_its_complement() -> None:
    d = bytes.fromhex(CARD_SN)[8:16]
    assert profile.diversify(MASTER_KEY, CARD_SN) == sm4_block(MASTER_KEY, d + xor(d, b"\xff" * 8))


def test_diversify_ignores_the_first_eight_bytes_of_card_sn() -> None:
    other_prefix = "ffffffffffffffff" + CARD_SN[16:]
    assert profile.diversify(MASTER_KEY, other_prefix) == K_AUTH


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 32, 40, 64])
def test_cmac_matches_textbook_construction(length: int) -> None:
    message = bytes(range(length))
    assert profile.sm4_cmac(K_TERM, message) == textbook_cmac(K_TERM, message)


def test_sign_in_cryptograms_are_cmac_in_opposite_orders() -> None:
    assert profile.terminal_cryptogram(K_TERM, RS, RT) == textbook_cmac(K_TERM, RS + RT)
    assert profile.server_cryptogram(K_TERM, RS, RT) == textbook_cmac(K_TERM, RT + RS)


def test_session_key_is_sp800_108_counter_mode_written_out() -> None:
    # K(i) = CMAC(K_term, [i]_4 ‖ label ‖ 0x00 ‖ Rs ‖ Rt ‖ [256]_4), i = 1, 2
    fixed = b"cardsvc session" + b"\x00" + RS + RT + (256).to_bytes(4, "big")
    expected = b"".join(textbook_cmac(K_TERM, i.to_bytes(4, "big") + fixed) for i in (1, 2))
    assert profile.derive_session_key(K_TERM, RS, RT) == expected


def test_unblock_key_is_sp800_108_with_hmac_sha256_written_out() -> None:
    # K_unblock = HMAC-SHA256(K_txn, [1]_4 ‖ "cardsvc pin unblock" ‖ 0x00 ‖ card_sn ‖ [128]_4)[:16]
    fixed = b"cardsvc pin unblock" + b"\x00" + bytes.fromhex(CARD_SN) + (128).to_bytes(4, "big")
    expected = hmac.new(K_TXN, (1).to_bytes(4, "big") + fixed, hashlib.sha256).digest()[:16]
    assert profile.pin_unblock_key(K_TXN, CARD_SN) == expected


def test_unblock_key_is_no_sm4_function_the_card_answers() -> None:
    """The card encrypts any block under K_auth (and K_txn after VERIFY) for its holder:
    K_unblock must not be one of those encryptions."""
    k_unblock = profile.pin_unblock_key(K_TXN, CARD_SN)
    label_block = (b"cardsvc pin unblock" + bytes(16))[:16]
    for key in (K_AUTH, K_TXN):
        for block in (bytes(16), bytes.fromhex(CARD_SN), label_block):
            assert sm4_block(key, block) != k_unblock


def test_unblock_mac_is_truncated_cmac_of_header_and_card_challenge() -> None:
    k_unblock = profile.pin_unblock_key(K_TXN, CARD_SN)
    rc = bytes(range(0xA1, 0xA9))
    mac = profile.pin_unblock_mac(k_unblock, rc)
    assert mac == textbook_cmac(k_unblock, bytes.fromhex("0c2c0300") + rc)[:8]
    assert profile.pin_unblock_command(mac) == bytes.fromhex("0c2c03000a8e08") + mac


def test_card_cryptogram_is_ecb_of_the_challenge() -> None:
    assert profile.card_cryptogram(K_AUTH, CHALLENGE) == sm4_block(K_AUTH, CHALLENGE)


def test_kcv_is_prefix_of_zero_block_encryption() -> None:
    assert profile.key_check_value(K_TERM) == sm4_block(K_TERM, bytes(16))[:3].hex()


def test_request_signature_is_hmac_of_canonical_request() -> None:
    body = b'{"a":1}'
    fields = ("/v1/settlements?x=1", "1700000000", "abcdefghijklmnop")
    canonical = b"POST\n/v1/settlements?x=1\n1700000000\nabcdefghijklmnop\n" + (
        hashlib.sha256(body).hexdigest().encode()
    )
    assert profile.canonical_request("post", *fields, body) == canonical
    expected = hmac.new(SESSION_KEY, canonical, hashlib.sha256).hexdigest()
    assert profile.request_signature(SESSION_KEY, "POST", *fields, body) == expected


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [("/v1/cards", "", "/v1/cards"), ("/v1/cards", "a=1&b=%20", "/v1/cards?a=1&b=%20")],
)
def test_path_with_query(path: str, query: str, expected: str) -> None:
    assert profile.path_with_query(path, query) == expected


def test_canonical_request_refuses_newlines() -> None:
    with pytest.raises(ValueError, match="newline"):
        profile.canonical_request("GET", "/v1", "1700000000", "abc\ndef", b"")


# --- personalisation blob --------------------------------------------------------------------


def test_unseal_opens_the_fixed_blob() -> None:
    assert profile.unseal_card_keys(K_TERM, CARD_SN, SEALED) == (K_AUTH, K_TXN)


def test_seal_uses_a_fresh_random_nonce() -> None:
    first = profile.seal_card_keys(K_TERM, CARD_SN, K_AUTH, K_TXN)
    second = profile.seal_card_keys(K_TERM, CARD_SN, K_AUTH, K_TXN)
    assert first[:24] != second[:24]
    assert profile.unseal_card_keys(K_TERM, CARD_SN, second) == (K_AUTH, K_TXN)


def _flip_last_hex_digit(blob: str) -> str:
    return blob[:-1] + ("0" if blob[-1] != "0" else "1")


@pytest.mark.parametrize(
    ("k_term", "card_sn", "blob"),
    [
        pytest.param(K_TERM, CARD_SN, _flip_last_hex_digit(SEALED), id="tampered tag"),
        pytest.param(K_TERM, "0" * 32, SEALED, id="another card"),
        pytest.param(MASTER_KEY, CARD_SN, SEALED, id="another key"),
        pytest.param(K_TERM, CARD_SN, SEALED[:-2], id="too short"),
        pytest.param(K_TERM, CARD_SN, "zz" + SEALED[2:], id="not hex"),
        pytest.param(K_TERM, CARD_SN, "", id="empty"),
    ],
)
def test_unseal_refuses_bad_blobs(k_term: bytes, card_sn: str, blob: str) -> None:
    with pytest.raises(profile.SealedBlobError):
        profile.unseal_card_keys(k_term, card_sn, blob)


# --- input validation ------------------------------------------------------------------------

INVALID_CALLS: list[tuple[str, Callable[[], object]]] = [
    ("short master key", lambda: profile.diversify(bytes(15), CARD_SN)),
    ("upper-case card_sn", lambda: profile.diversify(MASTER_KEY, "ABCDEF" + CARD_SN[6:])),
    ("short card_sn", lambda: profile.diversify(MASTER_KEY, CARD_SN[:30])),
    ("short challenge", lambda: profile.card_cryptogram(K_AUTH, CHALLENGE[:15])),
    ("long card key", lambda: profile.card_cryptogram(bytes(17), CHALLENGE)),
    ("short cmac key", lambda: profile.sm4_cmac(bytes(8), b"")),
    ("short rs", lambda: profile.terminal_cryptogram(K_TERM, RS[:8], RT)),
    ("long rt", lambda: profile.server_cryptogram(K_TERM, RS, RT + b"x")),
    ("short k_term for kdf", lambda: profile.derive_session_key(K_TERM[:8], RS, RT)),
    ("short k_auth", lambda: profile.seal_card_keys(K_TERM, CARD_SN, K_AUTH[:8], K_TXN)),
    ("short nonce", lambda: profile.seal_card_keys(K_TERM, CARD_SN, K_AUTH, K_TXN, bytes(8))),
    ("bad card_sn to unseal", lambda: profile.unseal_card_keys(K_TERM, "x" * 32, SEALED)),
    ("short session key", lambda: profile.request_signature(bytes(16), "GET", "/", "1", "n", b"")),
    ("short kcv key", lambda: profile.key_check_value(bytes(4))),
    ("short k_txn for unblock", lambda: profile.pin_unblock_key(K_TXN[:8], CARD_SN)),
    ("bad card_sn for unblock", lambda: profile.pin_unblock_key(K_TXN, "AB" + CARD_SN[2:])),
    ("16-byte card challenge", lambda: profile.pin_unblock_mac(K_TXN, CHALLENGE)),
    ("short unblock MAC", lambda: profile.pin_unblock_command(bytes(4))),
]


@pytest.mark.parametrize(("name", "call"), INVALID_CALLS, ids=[c[0] for c in INVALID_CALLS])
def test_invalid_input_raises_value_error(name: str, call: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("ab" * 32, "ab" * 32, True),
        ("ab" * 32, "ab" * 31 + "ac", False),
        ("ab" * 32, "ab" * 31, False),
        ("ab" * 32, "签名", False),
        ("", "", True),
    ],
)
def test_signatures_equal(a: str, b: str, equal: bool) -> None:
    assert profile.signatures_equal(a, b) is equal


def test_constants() -> None:
    assert (profile.KEY_LEN, profile.CHALLENGE_LEN) == (16, 16)
    assert (profile.KEY_REF_AUTH, profile.KEY_REF_TXN) == (1, 2)
