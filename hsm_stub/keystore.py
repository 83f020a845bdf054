"""hsm_stub's keys: the local master key (LMK) and the issuer master keys per region.

A key "under the LMK" is ``SM4-GCM(LMK, key, AAD = key type label)`` serialised as
``nonce ‖ ciphertext ‖ tag`` (44 bytes); the label in the AAD means a blob of one type never
opens as another. A terminal key's label carries the terminal's kind, ``TERM:counter``,
``TERM:pos``, ``TERM:his`` or ``TERM:kiosk``, so the HSM itself knows what a key may be used
for (only a counter's key receives card keys). Blobs made before kinds were bound carry the
bare label ``TERM``: they open as a terminal key *without* a kind (sign-in and KCV only).

The keystore file ``<dir>/keystore.json`` holds, per region ``admdvs``, the ``IMK_AUTH``
and ``IMK_TXN`` blobs (hex) and the LMK's check value, so that opening it with another LMK
fails at start rather than at the first card. Only provisioning creates a region's keys::

    {"format": 1, "lmk_kcv": "1a2b3c",
     "regions": {"320200": {"IMK_AUTH": "<hex blob>", "IMK_TXN": "<hex blob>"}},
     "audit_anchor": "<hex blob>"}

``audit_anchor`` (the ``AUDIT_ANCHOR`` key that MACs cardsvc's audit chain heads) is absent
until the first anchor asks for it; it is generated here and never leaves under any command.

Every change is written atomically (temp file, fsync, rename, fsync of the folder), under
an exclusive ``flock`` of ``<dir>/keystore.lock`` and after reading the file again, so two
processes on one keystore (a running hsm_stub and ``provision-region``, say) never write
from stale memory over each other's keys: each change is applied to what the file holds
then. A running hsm_stub reads the file again when it is asked for a region or the audit
anchor key it does not know and the file has changed since it last read it, so a region
provisioned while it runs is served without a restart.

Errors::

    KeystoreError
    ├── LmkError        no usable LMK, or not the LMK this keystore was created under
    ├── KeyBlobError    not a key of the expected type under this LMK
    └── UnknownRegion   no issuer keys for this region (and not asked to create them)
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardcrypto import profile
from hsmlink.protocol import TerminalKind

KEYSTORE_FILE = "keystore.json"
LOCK_FILE = "keystore.lock"
GENERATED_LMK_FILE = "lmk.key"
_FORMAT = 1
_ADMDVS = re.compile(r"[0-9]{6}")
_LMK_HEX = re.compile(r"[0-9a-fA-F]{32}")


class KeyType(enum.StrEnum):
    TERM = "TERM"  # a terminal key of no kind: only blobs made before kinds were bound
    IMK_AUTH = "IMK_AUTH"
    IMK_TXN = "IMK_TXN"
    AUDIT_ANCHOR = "AUDIT_ANCHOR"


class KeystoreError(Exception):
    """Base of keystore errors; messages never contain key material."""


class LmkError(KeystoreError):
    pass


class KeyBlobError(KeystoreError):
    pass


class UnknownRegion(KeystoreError):
    pass


def is_admdvs(text: str) -> bool:
    """A region code: 6 digits."""
    return _ADMDVS.fullmatch(text) is not None


# --- the LMK ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedLmk:
    key: bytes = field(repr=False)
    source: str  # where it came from, for the start-up log line
    generated: bool = False


def load_lmk(keystore_dir: Path, *, lmk_file: Path | None, env_hex: str | None) -> LoadedLmk:
    """The LMK from ``lmk_file``, else ``env_hex`` (HSM_LMK), else ``<dir>/lmk.key``.

    ``<dir>/lmk.key`` is generated (mode 0600) when none of them exists yet.
    """
    if lmk_file is not None:
        return LoadedLmk(_read_lmk_file(lmk_file), f"file {lmk_file}")
    if env_hex:
        return LoadedLmk(_parse_lmk_hex(env_hex, "HSM_LMK"), "environment HSM_LMK")
    generated_path = keystore_dir / GENERATED_LMK_FILE
    if generated_path.exists():
        return LoadedLmk(_read_lmk_file(generated_path), f"file {generated_path}")
    return LoadedLmk(_generate_lmk_file(generated_path), f"file {generated_path}", generated=True)


def _parse_lmk_hex(text: str, source: str) -> bytes:
    if not _LMK_HEX.fullmatch(text.strip()):
        raise LmkError(f"LMK from {source} must be 32 hex characters")
    return bytes.fromhex(text.strip())


def _read_lmk_file(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise LmkError(f"cannot read LMK file {path}: {type(exc).__name__}") from None
    return _parse_lmk_hex(text, str(path))


def _generate_lmk_file(path: Path) -> bytes:
    lmk = os.urandom(profile.KEY_LEN)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # O_EXCL: two first starts racing must not silently replace each other's LMK.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(lmk.hex() + "\n")
        out.flush()
        os.fsync(out.fileno())
    return lmk


# --- keys under the LMK ----------------------------------------------------------------------


def terminal_label(kind: TerminalKind) -> str:
    """The AAD label of a terminal key of ``kind``."""
    return f"{KeyType.TERM}:{kind}"


def wrap_key(lmk: bytes, key_type: KeyType | str, key: bytes) -> bytes:
    """``key`` under the LMK, bound to ``key_type`` (a ``KeyType`` or ``terminal_label``)."""
    if len(key) != profile.KEY_LEN:
        raise ValueError(f"keys are {profile.KEY_LEN} bytes")
    return profile.sm4_gcm_seal(lmk, key, key_type.encode("ascii"))


def unwrap_key(lmk: bytes, key_type: KeyType | str, blob: bytes) -> bytes:
    """The clear key of a blob made by ``wrap_key`` with the same LMK and type."""
    try:
        key = profile.sm4_gcm_open(lmk, blob, key_type.encode("ascii"))
    except profile.SealedBlobError:
        raise KeyBlobError(f"not a {key_type} key under this LMK") from None
    if len(key) != profile.KEY_LEN:
        raise KeyBlobError(f"not a {key_type} key under this LMK")
    return key


@dataclass(frozen=True)
class TerminalKey:
    kind: TerminalKind | None  # None: a blob made before kinds were bound (label "TERM")
    key: bytes = field(repr=False)


def unwrap_terminal_key(lmk: bytes, blob: bytes) -> TerminalKey:
    """A terminal key of any kind (or of none, a legacy blob); ``KeyBlobError`` otherwise."""
    for kind in TerminalKind:
        try:
            return TerminalKey(kind, unwrap_key(lmk, terminal_label(kind), blob))
        except KeyBlobError:
            continue
    try:
        return TerminalKey(None, unwrap_key(lmk, KeyType.TERM, blob))
    except KeyBlobError:
        raise KeyBlobError("not a terminal key under this LMK") from None


# --- the keystore file -----------------------------------------------------------------------


@dataclass(frozen=True)
class IssuerKeys:
    auth: bytes = field(repr=False)
    txn: bytes = field(repr=False)


class Keystore:
    """Issuer master keys per region, persisted under the LMK. Open with ``Keystore.open``."""

    def __init__(
        self,
        path: Path,
        lmk: bytes,
        regions: dict[str, dict[str, str]],
        audit_anchor: str | None = None,
    ) -> None:
        self._path = path
        self._lmk = lmk
        self._regions = regions
        self._audit_anchor = audit_anchor
        self._seen = _file_version(path)  # the file as last read or written here

    @classmethod
    def open(cls, directory: Path, lmk: bytes) -> Keystore:
        """Open (or create) ``<directory>/keystore.json``; ``LmkError`` if the LMK differs."""
        path = directory / KEYSTORE_FILE
        if not path.exists():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            with _locked(directory):
                if not path.exists():  # two first starts: one creates it
                    keystore = cls(path, lmk, {})
                    keystore._persist(keystore._regions)
                    return keystore
        keystore = cls(path, lmk, {})
        keystore._reload()
        return keystore

    def _reload(self) -> None:
        """Take the file's regions and audit anchor key (``LmkError`` if the LMK differs)."""
        version = _file_version(self._path)
        document = _read_document(self._path)
        expected_kcv = profile.key_check_value(self._lmk)
        if document["lmk_kcv"] != expected_kcv:
            raise LmkError(
                f"keystore {self._path} was created under LMK kcv {document['lmk_kcv']}, "
                f"not under the given LMK (kcv {expected_kcv})"
            )
        self._regions = document["regions"]
        self._audit_anchor = document.get("audit_anchor")
        self._seen = version

    def _reload_if_changed(self) -> None:
        """Read the file again if another process changed it since (a stat, nothing more
        when it did not)."""
        if _file_version(self._path) != self._seen:
            with _locked(self._path.parent):
                self._reload()

    @property
    def regions(self) -> list[str]:
        return sorted(self._regions)

    def wrap(self, key_type: KeyType, key: bytes) -> bytes:
        return wrap_key(self._lmk, key_type, key)

    def unwrap(self, key_type: KeyType, blob: bytes) -> bytes:
        return unwrap_key(self._lmk, key_type, blob)

    def wrap_terminal(self, kind: TerminalKind, key: bytes) -> bytes:
        return wrap_key(self._lmk, terminal_label(kind), key)

    def unwrap_terminal(self, blob: bytes) -> TerminalKey:
        return unwrap_terminal_key(self._lmk, blob)

    def issuer_keys(self, admdvs: str, *, create: bool = False) -> IssuerKeys:
        """The region's IMK_AUTH and IMK_TXN; created and persisted first if ``create``.

        Only provisioning (``python -m hsm_stub provision-region``, ``--regions``) creates
        keys; no command a host can send does."""
        if admdvs not in self._regions:
            self._reload_if_changed()  # provisioned by another process since?
        if admdvs not in self._regions:
            if not create:
                raise UnknownRegion(f"no issuer keys for region {admdvs}")
            self.ensure_region(admdvs)
        blobs = self._regions[admdvs]
        return IssuerKeys(
            auth=self._unwrap_hex(KeyType.IMK_AUTH, blobs[KeyType.IMK_AUTH]),
            txn=self._unwrap_hex(KeyType.IMK_TXN, blobs[KeyType.IMK_TXN]),
        )

    def ensure_region(self, admdvs: str) -> bool:
        """Create the region's issuer master keys unless they exist; persisted before use.

        Returns whether they were created now."""
        if not is_admdvs(admdvs):
            raise ValueError("admdvs must be 6 digits")
        if admdvs in self._regions:
            return False
        with _locked(self._path.parent):
            self._reload()  # what the file holds now, not what this process last read
            if admdvs in self._regions:
                return False
            new_keys = {
                key_type.value: self.wrap(key_type, os.urandom(profile.KEY_LEN)).hex()
                for key_type in (KeyType.IMK_AUTH, KeyType.IMK_TXN)
            }
            regions = {**self._regions, admdvs: new_keys}
            self._persist(regions)
            self._regions = regions
        return True

    def region_kcvs(self, admdvs: str) -> tuple[str, str]:
        """Check values of the region's IMK_AUTH and IMK_TXN (for logs; never the keys)."""
        keys = self.issuer_keys(admdvs)
        return profile.key_check_value(keys.auth), profile.key_check_value(keys.txn)

    def audit_anchor_key(self, *, create: bool = False) -> bytes:
        """The audit anchor key; generated and persisted first if ``create`` and none yet."""
        if self._audit_anchor is None:
            self._reload_if_changed()  # created by another process since?
        if self._audit_anchor is None:
            if not create:
                raise KeyBlobError("no audit anchor key yet")
            with _locked(self._path.parent):
                self._reload()
                if self._audit_anchor is None:
                    blob = self.wrap(KeyType.AUDIT_ANCHOR, os.urandom(profile.KEY_LEN)).hex()
                    self._persist(self._regions, audit_anchor=blob)
                    self._audit_anchor = blob
        assert self._audit_anchor is not None
        return self._unwrap_hex(KeyType.AUDIT_ANCHOR, self._audit_anchor)

    def _unwrap_hex(self, key_type: KeyType, blob_hex: str) -> bytes:
        try:
            blob = bytes.fromhex(blob_hex)
        except ValueError:
            raise KeyBlobError(f"stored {key_type} blob is not hex") from None
        return self.unwrap(key_type, blob)

    def _persist(
        self, regions: dict[str, dict[str, str]], *, audit_anchor: str | None = None
    ) -> None:
        document: dict[str, Any] = {
            "format": _FORMAT,
            "lmk_kcv": profile.key_check_value(self._lmk),
            "regions": regions,
        }
        anchor_blob = audit_anchor or self._audit_anchor
        if anchor_blob is not None:
            document["audit_anchor"] = anchor_blob
        data = json.dumps(document, indent=2, sort_keys=True).encode("ascii")
        _write_atomically(self._path, data)
        self._seen = _file_version(self._path)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """The keystore folder's exclusive lock, between processes (``flock``; released when
    the descriptor is closed, also if the process dies)."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _file_version(path: Path) -> tuple[int, int, int] | None:
    """What tells one version of the file from the next (a rename makes a new inode)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _read_document(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeystoreError(f"cannot read keystore {path}: {type(exc).__name__}") from None
    if not (
        isinstance(document, dict)
        and document.get("format") == _FORMAT
        and isinstance(document.get("lmk_kcv"), str)
        and _valid_regions(document.get("regions"))
        and isinstance(document.get("audit_anchor", ""), str)
    ):
        raise KeystoreError(f"keystore {path} is not a format {_FORMAT} keystore")
    return document


def _valid_regions(regions: object) -> bool:
    key_types = {KeyType.IMK_AUTH.value, KeyType.IMK_TXN.value}
    return isinstance(regions, dict) and all(
        isinstance(admdvs, str)
        and isinstance(blobs, dict)
        and blobs.keys() == key_types
        and all(isinstance(blob, str) for blob in blobs.values())
        for admdvs, blobs in regions.items()
    )


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    # fsync the folder so the rename itself survives a crash.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
