from __future__ import annotations

import pytest

from cardsvc.privacy import DataProtector, DecryptionError, key_check_value


def test_encrypt_round_trip_bound_to_its_row():
    protector = DataProtector(bytes(32))
    blob = protector.encrypt(b"11010519491231002X", b"3202000000000001")
    assert b"11010519491231002X" not in blob
    assert protector.decrypt(blob, b"3202000000000001") == b"11010519491231002X"
    with pytest.raises(DecryptionError):
        protector.decrypt(blob, b"3202000000000002")
    with pytest.raises(DecryptionError):
        DataProtector(bytes([1]) * 32).decrypt(blob, b"3202000000000001")


def test_lookup_hash_is_keyed_and_stable():
    a, b = DataProtector(bytes(32)), DataProtector(bytes([1]) * 32)
    assert a.lookup_hash("x") == a.lookup_hash("x")
    assert a.lookup_hash("x") != b.lookup_hash("x")


def test_key_check_value_is_stable_and_tells_keys_apart():
    a, b = bytes(32), bytes([1]) * 32
    assert key_check_value(a) == key_check_value(a) != key_check_value(b)
    assert len(key_check_value(a)) == 12 and bytes.fromhex(key_check_value(a))
