"""The virtual social security card's SSSE application: APDU in, response APDU out, pure.

``VirtualCard.process`` answers any bytes with response data and a status word and never
raises (docs/readers.md lists every status word). PIN checking, INTERNAL AUTHENTICATE and the
issuer-authorised PIN unblock (RESET RETRY COUNTER, then CHANGE REFERENCE DATA) are
``SoftCard``'s; this module adds the file system, the personalisation commands (class 80,
open card only) and persistence: every change of state is handed to ``persist`` *before* the
answer is returned, so a try counter the terminal has seen decrease is already on disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import msgspec

from cardcrypto import profile
from cardsvc.cards.records import CardRecords
from cardsvc.terminal_sdk import cardprofile as cp
from cardsvc.terminal_sdk.personalise import personalisation_commands
from cardsvc.terminal_sdk.softcard import PIN_TRIES, CardRefused, SoftCard
from cardsvc.vcard.apdu import Command, MalformedApdu, parse
from cardsvc.vcard.state import CardState, blank

SW_MEMORY_FAILURE = 0x6581


def _with_tck(atr: bytes) -> bytes:
    tck = 0
    for byte in atr[1:]:
        tck ^= byte
    return atr + bytes([tck])


# TS 3B (direct convention), T0 88 (TD1 follows, 8 historical bytes), TD1 01 (T=1 only),
# historical bytes "SSSE3.00" (proprietary), TCK (required when T=1 is offered).
ATR = _with_tck(bytes.fromhex("3B8801") + b"SSSE3.00")

Persist = Callable[[CardState], None]
_CHANGE_REFERENCE_DATA = bytes([cp.CLA_ISO, cp.INS_CHANGE_REFERENCE_DATA])


class _Refusal(Exception):
    def __init__(self, sw: int) -> None:
        super().__init__(f"{sw:04X}")
        self.sw = sw


def _sw(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


def _ok(data: bytes = b"") -> bytes:
    return data + _sw(cp.SW_OK)


def _no_persist(state: CardState) -> None:
    del state


def _require(condition: bool, sw: int) -> None:
    if not condition:
        raise _Refusal(sw)


def _tag_key(tag: int) -> str:
    return f"{tag:02x}"


def _records_of(state: CardState, fid: int) -> dict[str, str]:
    return state.ef05 if fid == cp.EF05 else state.ef06


class VirtualCard:
    def __init__(
        self,
        state: CardState,
        persist: Persist = _no_persist,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._state, self._persist, self._random = state, persist, random
        self._security = self._make_security(state)
        self._selected = False
        self._current_ef: int | None = None
        self._handlers: dict[tuple[int, int], Callable[[Command], bytes]] = {
            (cp.CLA_ISO, cp.INS_SELECT): self._select,
            (cp.CLA_ISO, cp.INS_READ_RECORD): self._read_record,
            (cp.CLA_ISO, cp.INS_GET_CHALLENGE): self._get_challenge,
            (cp.CLA_ISO, cp.INS_INTERNAL_AUTHENTICATE): self._internal_authenticate,
            (cp.CLA_ISO, cp.INS_VERIFY): self._verify,
            (cp.CLA_SECURE_MESSAGING, cp.INS_RESET_RETRY_COUNTER): self._reset_retry_counter,
            (cp.CLA_ISO, cp.INS_CHANGE_REFERENCE_DATA): self._change_reference_data,
            (cp.CLA_PROPRIETARY, cp.INS_WRITE_RECORD): self._write_record,
            (cp.CLA_PROPRIETARY, cp.INS_PUT_KEY): self._put_key,
            (cp.CLA_PROPRIETARY, cp.INS_SET_PIN): self._set_pin,
            (cp.CLA_PROPRIETARY, cp.INS_LOCK): self._lock,
            (cp.CLA_PROPRIETARY, cp.INS_GET_LIFECYCLE): self._get_lifecycle,
        }

    @property
    def state(self) -> CardState:
        return self._state

    @property
    def atr(self) -> bytes:
        return ATR

    # ------------------------------------------------------------------ power
    def power_off(self) -> None:
        self._new_session()

    def power_on(self) -> None:
        self._new_session()

    def reset(self) -> None:
        self._new_session()

    def _new_session(self) -> None:
        # Selection and a verified PIN last one power session only.
        self._selected, self._current_ef = False, None
        if self._security is not None:
            self._security.power_cycle()

    # ------------------------------------------------------------------ dispatch
    def process(self, raw: bytes) -> bytes:
        if self._security is not None and raw[:2] != _CHANGE_REFERENCE_DATA:
            self._security.other_command()  # a new PIN only right after the reset
        try:
            command = parse(raw)
        except MalformedApdu:
            return _sw(cp.SW_WRONG_LENGTH)
        if command.cla not in (cp.CLA_ISO, cp.CLA_PROPRIETARY, cp.CLA_SECURE_MESSAGING):
            return _sw(cp.SW_CLA_NOT_SUPPORTED)
        handler = self._handlers.get((command.cla, command.ins))
        if handler is None:
            return _sw(cp.SW_INS_NOT_SUPPORTED)
        try:
            return handler(command)
        except _Refusal as refusal:
            return _sw(refusal.sw)
        except OSError:  # the state could not be saved: refuse rather than answer unsaved
            self._new_session()
            return _sw(SW_MEMORY_FAILURE)

    def _update(self, **changes: Any) -> None:
        self._state = msgspec.structs.replace(self._state, **changes)
        self._persist(self._state)

    # ------------------------------------------------------------------ ISO commands
    def _select(self, cmd: Command) -> bytes:
        _require(cmd.p1 in (0x02, 0x04), cp.SW_WRONG_P1P2)
        _require(cmd.p2 in (0x00, 0x0C), cp.SW_WRONG_P1P2)
        _require(bool(cmd.data), cp.SW_WRONG_LENGTH)
        if cmd.p1 == 0x04:
            _require(cmd.data == cp.AID_SSSE, cp.SW_FILE_NOT_FOUND)
            self._selected, self._current_ef = True, None
            return _ok()
        _require(len(cmd.data) == 2, cp.SW_WRONG_LENGTH)
        fid = int.from_bytes(cmd.data, "big")
        _require(self._selected and fid in cp.FILE_TAGS, cp.SW_FILE_NOT_FOUND)
        self._current_ef = fid
        return _ok()

    def _read_record(self, cmd: Command) -> bytes:
        # P2 00: "first record whose identifier is P1" — records are identified by tag.
        _require(cmd.p1 not in (0x00, 0xFF) and cmd.p2 == 0x00, cp.SW_WRONG_P1P2)
        _require(not cmd.data and cmd.le is not None, cp.SW_WRONG_LENGTH)
        _require(self._current_ef is not None, cp.SW_NO_CURRENT_EF)
        assert self._current_ef is not None
        value = _records_of(self._state, self._current_ef).get(_tag_key(cmd.p1))
        _require(value is not None, cp.SW_RECORD_NOT_FOUND)
        assert value is not None
        return self._answer(cmd, cp.tlv(cmd.p1, bytes.fromhex(value)))

    @staticmethod
    def _answer(cmd: Command, data: bytes) -> bytes:
        if cmd.le is not None and cmd.le < len(data):
            return _sw(0x6C00 | len(data))  # ISO: wrong Le, SW2 is the exact length
        return _ok(data)

    def _get_challenge(self, cmd: Command) -> bytes:
        _require(cmd.p1 == 0 and cmd.p2 == 0, cp.SW_WRONG_P1P2)
        _require(not cmd.data and cmd.le in (4, 8, 16), cp.SW_WRONG_LENGTH)
        assert cmd.le is not None
        if self._security is None:
            return _ok(self._random(cmd.le))
        # An issued card remembers its challenge for RESET RETRY COUNTER's MAC.
        return _ok(self._security.get_challenge(cmd.le, self._random))

    def _internal_authenticate(self, cmd: Command) -> bytes:
        _require(cmd.p1 == 0, cp.SW_WRONG_P1P2)
        _require(len(cmd.data) == profile.CHALLENGE_LEN, cp.SW_WRONG_LENGTH)
        security = self._in_use()
        try:
            cryptogram = security.internal_authenticate(cmd.p2, cmd.data)
        except CardRefused as refused:
            raise _Refusal(refused.sw) from None
        return self._answer(cmd, cryptogram)

    def _verify(self, cmd: Command) -> bytes:
        _require(cmd.p1 == 0, cp.SW_WRONG_P1P2)
        _require(cmd.p2 == 0, cp.SW_REFERENCE_NOT_FOUND)  # one PIN, reference 00
        security = self._in_use()
        if not cmd.data:
            return _sw(self._pin_status(security))
        _require(len(cmd.data) == 3, cp.SW_WRONG_LENGTH)
        pin = cp.bcd_to_pin(cmd.data)
        _require(pin is not None, cp.SW_WRONG_DATA)
        assert pin is not None
        try:
            security.verify(pin)
        except CardRefused as refused:
            self._save_tries(security)
            raise _Refusal(refused.sw) from None
        self._save_tries(security)
        return _ok()

    def _reset_retry_counter(self, cmd: Command) -> bytes:
        # Secure messaging: CLA 0C, P1 03 (the MAC is the authorisation, no data besides).
        _require(cmd.p1 == 0x03, cp.SW_WRONG_P1P2)
        _require(cmd.p2 == 0x00, cp.SW_REFERENCE_NOT_FOUND)
        security = self._in_use()
        try:
            security.reset_retry_counter(bytes([cmd.cla, cmd.ins, cmd.p1, cmd.p2]), cmd.data)
        except CardRefused as refused:
            raise _Refusal(refused.sw) from None
        self._save_unblock(pin_tries_left=security.tries_left)
        return _ok()

    def _change_reference_data(self, cmd: Command) -> bytes:
        try:
            return self._new_pin(cmd)
        finally:  # one chance: a refused new PIN closes the window too
            if self._security is not None:
                self._security.other_command()

    def _new_pin(self, cmd: Command) -> bytes:
        # P1 01: the new PIN alone, which the card takes only right after a valid reset
        # (P1 00, old PIN and new, is not part of this profile).
        _require(cmd.p1 == 0x01, cp.SW_WRONG_P1P2)
        _require(cmd.p2 == 0x00, cp.SW_REFERENCE_NOT_FOUND)
        security = self._in_use()
        _require(len(cmd.data) == 3, cp.SW_WRONG_LENGTH)
        pin = cp.bcd_to_pin(cmd.data)
        _require(pin is not None, cp.SW_WRONG_DATA)
        assert pin is not None
        try:
            security.change_pin(pin)
        except CardRefused as refused:
            raise _Refusal(refused.sw) from None
        self._save_unblock(pin=security.pin, pin_tries_left=security.tries_left)
        return _ok()

    def _save_unblock(self, **changes: Any) -> None:
        """Save what an unblock changed; if it cannot be saved, the card forgets it too (a
        reset the chip did not keep must not let the old PIN in for 3 more tries)."""
        before = self._state
        try:
            self._update(**changes)
        except OSError:
            self._state, self._security = before, self._make_security(before)
            raise

    def _save_tries(self, security: SoftCard) -> None:
        if security.tries_left != self._state.pin_tries_left:
            self._update(pin_tries_left=security.tries_left)

    @staticmethod
    def _pin_status(security: SoftCard) -> int:
        if security.tries_left == 0:
            return cp.SW_PIN_BLOCKED
        return cp.SW_OK if security.pin_verified else 0x63C0 | security.tries_left

    def _in_use(self) -> SoftCard:
        # Field commands need the application selected and a locked (issued) card.
        _require(self._selected and self._security is not None, cp.SW_CONDITIONS_NOT_SATISFIED)
        assert self._security is not None
        return self._security

    # ------------------------------------------------------------------ class 80
    def _require_open(self) -> None:
        _require(self._selected and self._state.lifecycle == "open", cp.SW_CONDITIONS_NOT_SATISFIED)

    def _write_record(self, cmd: Command) -> bytes:
        self._require_open()
        fid = cp.SHORT_IDS.get(cmd.p2)
        _require(fid is not None and cmd.p1 in cp.FILE_TAGS[fid], cp.SW_WRONG_P1P2)
        assert fid is not None
        length = cp.FILE_TAGS[fid][cmd.p1]
        fits = len(cmd.data) == length if length else 1 <= len(cmd.data) <= cp.MAX_VARIABLE_RECORD
        _require(fits, cp.SW_WRONG_LENGTH)
        records = {**_records_of(self._state, fid), _tag_key(cmd.p1): cmd.data.hex()}
        self._update(**{"ef05" if fid == cp.EF05 else "ef06": records})
        return _ok()

    def _put_key(self, cmd: Command) -> bytes:
        self._require_open()
        _require(cmd.p1 == 0, cp.SW_WRONG_P1P2)
        _require(cmd.p2 in (profile.KEY_REF_AUTH, profile.KEY_REF_TXN), cp.SW_REFERENCE_NOT_FOUND)
        _require(len(cmd.data) == profile.KEY_LEN + cp.KCV_LEN, cp.SW_WRONG_LENGTH)
        key, kcv = cmd.data[: profile.KEY_LEN], cmd.data[profile.KEY_LEN :]
        _require(profile.key_check_value(key) == kcv.hex(), cp.SW_WRONG_DATA)
        self._update(**{"k_auth" if cmd.p2 == profile.KEY_REF_AUTH else "k_txn": key.hex()})
        return _ok()

    def _set_pin(self, cmd: Command) -> bytes:
        self._require_open()
        _require(cmd.p1 == 0 and cmd.p2 == 0, cp.SW_WRONG_P1P2)
        _require(len(cmd.data) == 3, cp.SW_WRONG_LENGTH)
        pin = cp.bcd_to_pin(cmd.data)
        _require(pin is not None, cp.SW_WRONG_DATA)
        self._update(pin=pin, pin_tries_left=PIN_TRIES)
        return _ok()

    def _lock(self, cmd: Command) -> bytes:
        self._require_open()
        _require(cmd.p1 == 0 and cmd.p2 == 0, cp.SW_WRONG_P1P2)
        _require(not cmd.data, cp.SW_WRONG_LENGTH)
        _require(_complete(self._state), cp.SW_CONDITIONS_NOT_SATISFIED)
        self._update(lifecycle="locked")
        self._security = self._make_security(self._state)
        return _ok()

    def _get_lifecycle(self, cmd: Command) -> bytes:
        _require(self._selected, cp.SW_CONDITIONS_NOT_SATISFIED)
        _require(cmd.p1 == 0 and cmd.p2 == 0, cp.SW_WRONG_P1P2)
        _require(not cmd.data and cmd.le is not None, cp.SW_WRONG_LENGTH)
        locked = self._state.lifecycle == "locked"
        return self._answer(cmd, bytes([cp.LIFECYCLE_LOCKED if locked else cp.LIFECYCLE_OPEN]))

    @staticmethod
    def _make_security(state: CardState) -> SoftCard | None:
        if state.lifecycle != "locked" or not _complete(state):
            return None
        assert state.k_auth and state.k_txn and state.pin
        return SoftCard(
            bytes.fromhex(state.k_auth),
            bytes.fromhex(state.k_txn),
            state.pin,
            tries_left=state.pin_tries_left,
            card_sn=bytes.fromhex(state.ef05["01"]).hex(),
        )


def _complete(state: CardState) -> bool:
    files_full = all(
        set(map(_tag_key, tags)) <= _records_of(state, fid).keys()
        for fid, tags in cp.FILE_TAGS.items()
    )
    return files_full and bool(state.k_auth and state.k_txn and state.pin)


def personalised_state(records: CardRecords, k_auth: bytes, k_txn: bytes, pin: str) -> CardState:
    """A locked card's state, made by the same class-80 commands a counter's writer sends."""
    card = VirtualCard(blank())
    personalise_offline(card, personalisation_commands(records, k_auth, k_txn, pin))
    return card.state


def personalise_offline(card: VirtualCard, commands: list[bytes]) -> None:
    """Run a personalisation command list against an in-memory card (no reader needed)."""
    for command in commands:
        sw = int.from_bytes(card.process(command)[-2:], "big")
        if sw != cp.SW_OK:
            raise ValueError(f"personalisation refused: {sw:04X} {cp.sw_meaning(sw)}")
