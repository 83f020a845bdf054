"""The virtual card's persistent state (its EEPROM) and the file that holds it.

The file is JSON, mode 0600 (it holds the card keys and PIN, as a real card's chip does), and
is replaced atomically (write a temporary file, fsync, rename, fsync the folder), so a crash
mid-write leaves either the old card or the new one, never half of each.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Literal

import msgspec

from cardsvc.terminal_sdk.softcard import PIN_TRIES

Lifecycle = Literal["open", "locked"]
STATE_FORMAT = 1


class CardStateError(Exception):
    """The state file is missing or is not a card state."""


class CardState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: int = STATE_FORMAT
    lifecycle: Lifecycle = "open"
    # Record tag (two lowercase hex digits) → value hex, per file.
    ef05: dict[str, str] = msgspec.field(default_factory=dict)
    ef06: dict[str, str] = msgspec.field(default_factory=dict)
    k_auth: str | None = None
    k_txn: str | None = None
    pin: str | None = None
    pin_tries_left: int = PIN_TRIES


def blank() -> CardState:
    return CardState()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(CardState)


def load(path: Path) -> CardState:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CardStateError(f"no card state at {path}") from None
    try:
        state = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise CardStateError(f"{path} is not a card state: {exc}") from None
    if state.format != STATE_FORMAT:
        raise CardStateError(f"{path}: unknown card state format {state.format}")
    return state


def save(path: Path, state: CardState) -> None:
    """Replace the file atomically; the new file is created 0600 from the start."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover could have another mode; O_EXCL makes ours 0600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(msgspec.json.format(_encoder.encode(state), indent=2))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateFile:
    """The card's state file: ``save`` is the applet's persistence hook."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load_or_blank(self, *, create_blank: bool) -> CardState:
        if not self.path.exists() and create_blank:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save(self.path, blank())
        return load(self.path)

    def save(self, state: CardState) -> None:
        save(self.path, state)
