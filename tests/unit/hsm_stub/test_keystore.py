"""hsm_stub keystore: keys under the LMK, persistence, and refusing the wrong LMK or type."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from hsm_stub.keystore import (
    GENERATED_LMK_FILE,
    KEYSTORE_FILE,
    LOCK_FILE,
    KeyBlobError,
    Keystore,
    KeystoreError,
    KeyType,
    LmkError,
    UnknownRegion,
    load_lmk,
    unwrap_key,
    wrap_key,
)

LMK = bytes.fromhex("00112233445566778899aabbccddeeff")
OTHER_LMK = bytes.fromhex("ffeeddccbbaa99887766554433221100")
KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- keys under the LMK ----------------------------------------------------------------------


@pytest.mark.parametrize("key_type", list(KeyType))
def test_wrap_round_trip(key_type: KeyType) -> None:
    blob = wrap_key(LMK, key_type, KEY)
    assert len(blob) == 44
    assert KEY not in blob
    assert unwrap_key(LMK, key_type, blob) == KEY


@pytest.mark.parametrize(
    ("wrapped_as", "opened_as"),
    [
        (KeyType.TERM, KeyType.IMK_AUTH),
        (KeyType.IMK_AUTH, KeyType.IMK_TXN),
        (KeyType.IMK_TXN, KeyType.TERM),
    ],
)
def test_a_blob_of_one_type_does_not_open_as_another(
    wrapped_as: KeyType, opened_as: KeyType
) -> None:
    with pytest.raises(KeyBlobError, match=f"not a {opened_as} key"):
        unwrap_key(LMK, opened_as, wrap_key(LMK, wrapped_as, KEY))


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(wrap_key(OTHER_LMK, KeyType.TERM, KEY), id="other LMK"),
        pytest.param(bytes(44), id="zeros"),
        pytest.param(b"", id="empty"),
        pytest.param(wrap_key(LMK, KeyType.TERM, KEY)[:-1] + b"\x00", id="tampered"),
    ],
)
def test_bad_blobs_are_refused(blob: bytes) -> None:
    with pytest.raises(KeyBlobError):
        unwrap_key(LMK, KeyType.TERM, blob)


# --- the keystore file -----------------------------------------------------------------------


def test_region_keys_persist_across_reopen(tmp_path: Path) -> None:
    first = Keystore.open(tmp_path, LMK)
    created = first.issuer_keys("320200", create=True)
    reopened = Keystore.open(tmp_path, LMK)
    assert reopened.regions == ["320200"]
    assert reopened.issuer_keys("320200") == created
    assert created.auth != created.txn


def test_file_holds_only_wrapped_keys_and_is_private(tmp_path: Path) -> None:
    keys = Keystore.open(tmp_path, LMK).issuer_keys("320200", create=True)
    path = tmp_path / KEYSTORE_FILE
    text = path.read_text()
    assert keys.auth.hex() not in text and keys.txn.hex() not in text
    assert mode_of(path) == 0o600
    # No temporary file left behind; the lock file holds nothing.
    assert sorted(os.listdir(tmp_path)) == sorted([KEYSTORE_FILE, LOCK_FILE])
    assert (tmp_path / LOCK_FILE).read_bytes() == b""


def test_audit_anchor_key_is_made_once_kept_wrapped_and_survives_reopen(tmp_path: Path) -> None:
    keystore = Keystore.open(tmp_path, LMK)
    with pytest.raises(KeyBlobError, match="no audit anchor key"):
        keystore.audit_anchor_key()
    key = keystore.audit_anchor_key(create=True)
    assert keystore.audit_anchor_key(create=True) == key  # created once
    keystore.ensure_region("320200")  # persisting regions keeps the anchor key
    text = (tmp_path / KEYSTORE_FILE).read_text()
    assert key.hex() not in text
    blob = bytes.fromhex(json.loads(text)["audit_anchor"])
    assert unwrap_key(LMK, KeyType.AUDIT_ANCHOR, blob) == key
    with pytest.raises(KeyBlobError):
        unwrap_key(LMK, KeyType.TERM, blob)  # an anchor key never opens as a terminal key
    assert Keystore.open(tmp_path, LMK).audit_anchor_key() == key


def test_repr_of_issuer_keys_hides_them(tmp_path: Path) -> None:
    keys = Keystore.open(tmp_path, LMK).issuer_keys("320200", create=True)
    assert keys.auth.hex() not in repr(keys)


def test_ensure_region_is_idempotent(tmp_path: Path) -> None:
    keystore = Keystore.open(tmp_path, LMK)
    keystore.ensure_region("320100")
    before = keystore.issuer_keys("320100")
    keystore.ensure_region("320100")
    assert keystore.issuer_keys("320100") == before


def test_unknown_region_is_not_created_unless_asked(tmp_path: Path) -> None:
    keystore = Keystore.open(tmp_path, LMK)
    with pytest.raises(UnknownRegion):
        keystore.issuer_keys("320500")
    assert keystore.regions == []


@pytest.mark.parametrize("admdvs", ["32020", "3202000", "32020a", ""])
def test_region_codes_are_six_digits(tmp_path: Path, admdvs: str) -> None:
    with pytest.raises(ValueError):
        Keystore.open(tmp_path, LMK).ensure_region(admdvs)


def test_opening_with_another_lmk_fails_clearly(tmp_path: Path) -> None:
    Keystore.open(tmp_path, LMK).ensure_region("320200")
    with pytest.raises(LmkError, match="created under LMK kcv"):
        Keystore.open(tmp_path, OTHER_LMK)


def test_an_empty_keystore_still_remembers_its_lmk(tmp_path: Path) -> None:
    Keystore.open(tmp_path, LMK)
    with pytest.raises(LmkError):
        Keystore.open(tmp_path, OTHER_LMK)


def test_swapped_blobs_in_the_file_are_refused(tmp_path: Path) -> None:
    Keystore.open(tmp_path, LMK).ensure_region("320200")
    path = tmp_path / KEYSTORE_FILE
    document = json.loads(path.read_text())
    region = document["regions"]["320200"]
    region["IMK_AUTH"], region["IMK_TXN"] = region["IMK_TXN"], region["IMK_AUTH"]
    path.write_text(json.dumps(document))
    with pytest.raises(KeyBlobError):
        Keystore.open(tmp_path, LMK).issuer_keys("320200")


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("{not json", id="not json"),
        pytest.param('{"format": 2, "lmk_kcv": "000000", "regions": {}}', id="other format"),
        pytest.param(
            '{"format": 1, "lmk_kcv": "000000", "regions": {"320200": {"IMK_AUTH": "00"}}}',
            id="region without IMK_TXN",
        ),
    ],
)
def test_unreadable_keystore_fails_clearly(tmp_path: Path, content: str) -> None:
    (tmp_path / KEYSTORE_FILE).write_text(content)
    with pytest.raises(KeystoreError, match="keystore"):
        Keystore.open(tmp_path, LMK)


# --- loading the LMK -------------------------------------------------------------------------


def test_lmk_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    generated = load_lmk(tmp_path, lmk_file=None, env_hex=None)
    path = tmp_path / GENERATED_LMK_FILE
    assert generated.generated and len(generated.key) == 16
    assert mode_of(path) == 0o600
    again = load_lmk(tmp_path, lmk_file=None, env_hex=None)
    assert again.key == generated.key and not again.generated


def test_lmk_file_wins_over_the_environment(tmp_path: Path) -> None:
    lmk_file = tmp_path / "lmk.hex"
    lmk_file.write_text(LMK.hex().upper() + "\n")
    loaded = load_lmk(tmp_path, lmk_file=lmk_file, env_hex=OTHER_LMK.hex())
    assert loaded.key == LMK
    assert not (tmp_path / GENERATED_LMK_FILE).exists()


def test_lmk_from_the_environment(tmp_path: Path) -> None:
    loaded = load_lmk(tmp_path, lmk_file=None, env_hex=LMK.hex())
    assert loaded.key == LMK and loaded.source == "environment HSM_LMK"
    assert LMK.hex() not in repr(loaded)


@pytest.mark.parametrize("env_hex", ["00" * 15, "zz" * 16, "00" * 17])
def test_malformed_lmk_is_refused(tmp_path: Path, env_hex: str) -> None:
    with pytest.raises(LmkError, match="32 hex characters"):
        load_lmk(tmp_path, lmk_file=None, env_hex=env_hex)


def test_missing_lmk_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LmkError, match="cannot read LMK file"):
        load_lmk(tmp_path, lmk_file=tmp_path / "absent", env_hex=None)


def test_two_instances_on_one_keystore_lose_nothing(tmp_path: Path) -> None:
    """Two processes on one keystore (a running hsm_stub and provision-region): each
    change is applied to what the file holds then, never written from stale memory."""
    running, provisioner = Keystore.open(tmp_path, LMK), Keystore.open(tmp_path, LMK)
    provisioner.ensure_region("320500")
    anchor_key = running.audit_anchor_key(create=True)  # used to drop 320500
    assert Keystore.open(tmp_path, LMK).regions == ["320500"]
    assert running.issuer_keys("320500")  # learnt from the file, no restart

    provisioner.ensure_region("320600")  # used to drop the audit anchor key
    reopened = Keystore.open(tmp_path, LMK)
    assert reopened.regions == ["320500", "320600"]
    assert reopened.audit_anchor_key() == anchor_key
    # Both asking for the anchor key first: one key, the same in both.
    first, second = Keystore.open(tmp_path / "b", LMK), Keystore.open(tmp_path / "b", LMK)
    assert first.audit_anchor_key(create=True) == second.audit_anchor_key(create=True)
