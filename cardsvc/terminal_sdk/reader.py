"""``CardReader``: a terminal's PC/SC card access over pyscard (docs/protocol.md, card profile).

    reader = CardReader()                 # the first reader pcscd lists, or CardReader(name)
    reader.wait_for_card(timeout=30)      # connects exclusively: no other app interleaves
    info = reader.read_card()             # SELECT SSSE, EF05 and EF06 records → CardInfo
    reader.verify_pin("123456")
    reader.reset_retry_counter(command)   # a PIN unblock the service prepared, then at once
    reader.change_pin_after_unblock("654321")
    cryptogram = reader.internal_authenticate(2, challenge)
    reader.close()                        # unpowers the card: a verified PIN does not outlive us

Every call blocks (pyscard is synchronous); async code runs them with ``asyncio.to_thread``.
Status words and PC/SC failures become these exceptions:

    CardError
    ├── ReaderUnavailable       no PC/SC service, or no such reader
    ├── NoCard                  no card came within the wait
    ├── ReaderBusy              another application holds the card
    ├── CardRemoved             the card left the reader (or stopped answering) mid-command
    ├── CardMismatch            another card is in the reader than the one the flow began with
    ├── CardNotPersonalised     a blank card where an issued one is needed
    ├── CardAlreadyPersonalised an issued (locked) card where a blank one is needed
    ├── CardDataError           the card's answer does not follow the profile
    └── CardStatusError         the card refused a command (``.sw``)
        ├── WrongPin            63Cx (``.tries_left``)
        ├── PinBlocked          6983
        ├── SecurityNotSatisfied 6982 (K_txn before VERIFY)
        └── ConditionsNotSatisfied 6985
"""

from __future__ import annotations

import contextlib
import functools
import time
from types import SimpleNamespace, TracebackType
from typing import Any

import msgspec

from cardsvc.persons.certno import mask
from cardsvc.terminal_sdk import cardprofile as cp
from cardsvc.terminal_sdk.softcard import PIN_TRIES

_REMOVED_GRACE = 1.5  # pcscd polls vpcd presence every 0.4 s: time to see the card gone
_POLL_MS = 200


class CardError(Exception):
    """Base of every card and reader failure."""


class ReaderUnavailable(CardError):
    pass


class NoCard(CardError):
    pass


class ReaderBusy(CardError):
    pass


class CardRemoved(CardError):
    pass


class CardMismatch(CardError):
    pass


class CardNotPersonalised(CardError):
    pass


class CardAlreadyPersonalised(CardError):
    pass


class CardDataError(CardError):
    pass


class CardStatusError(CardError):
    def __init__(self, sw: int, command: str) -> None:
        super().__init__(f"{command}: card answered {sw:04X} ({cp.sw_meaning(sw)})")
        self.sw, self.command = sw, command


class WrongPin(CardStatusError):
    @property
    def tries_left(self) -> int:
        return self.sw & 0x0F


class PinBlocked(CardStatusError):
    pass


class SecurityNotSatisfied(CardStatusError):
    pass


class ConditionsNotSatisfied(CardStatusError):
    pass


def status_error(sw: int, command: str) -> CardStatusError:
    if sw & 0xFFF0 == 0x63C0:
        return WrongPin(sw, command)
    kind = {
        cp.SW_PIN_BLOCKED: PinBlocked,
        cp.SW_SECURITY_NOT_SATISFIED: SecurityNotSatisfied,
        cp.SW_CONDITIONS_NOT_SATISFIED: ConditionsNotSatisfied,
    }.get(sw, CardStatusError)
    return kind(sw, command)


class CardInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the card's EF05 and EF06 hold. ``certno`` is the full identity number: show it
    only where the holder's card is read (the national line), never log it."""

    atr: str  # uppercase hex, the national format's 复位信息
    card_sn: str  # lowercase hex, as the service writes it
    card_type: str
    version: str
    admdvs: str
    issue_date: str  # YYYYMMDD
    expiry_date: str
    card_no: str
    certno: str
    name: str
    gender: str
    nationality: str
    birth_date: str

    @property
    def masked_certno(self) -> str:
        return mask(self.certno)


def national_line(info: CardInfo, terminal_no: str = "", device_no: str = "") -> str:
    """``区划|社会保障号码|卡号|卡识别码|姓名|复位信息|版本|发卡日期|有效期|终端机编号|终端设备号|``"""
    fields = (
        info.admdvs,
        info.certno,
        info.card_no,
        info.card_sn.upper(),
        info.name,
        info.atr,
        info.version,
        info.issue_date,
        info.expiry_date,
        terminal_no,
        device_no,
    )
    return "|".join(fields) + "|"


def _text(value: bytes, encoding: str = "ascii") -> str:
    try:
        return value.decode(encoding).rstrip(" \x00")
    except UnicodeDecodeError:
        raise CardDataError("a record is not text in the profile's encoding") from None


def card_info(atr: bytes, records: dict[int, dict[int, bytes]]) -> CardInfo:
    ef05, ef06 = records[cp.EF05], records[cp.EF06]
    return CardInfo(
        atr=atr.hex().upper(),
        card_sn=ef05[0x01].hex(),
        card_type=_text(ef05[0x02]),
        version=_text(ef05[0x03]),
        admdvs=_text(ef05[0x04]),
        issue_date=ef05[0x05].hex(),
        expiry_date=ef05[0x06].hex(),
        card_no=_text(ef05[0x07]),
        certno=_text(ef06[0x08]),
        name=_text(ef06[0x09], "gbk"),
        gender=_text(ef06[0x0A]),
        nationality=_text(ef06[0x0B]),
        birth_date=ef06[0x0D].hex(),
    )


@functools.cache
def _pyscard() -> SimpleNamespace:
    """pyscard, imported on first use: the SDK's pure parts (records, the national line) load
    where the PC/SC client library is missing, and a reader then says so clearly."""
    try:
        from smartcard import scard
        from smartcard.CardConnection import CardConnection
        from smartcard.Exceptions import CardConnectionException, NoCardException
        from smartcard.System import readers
    except ImportError as exc:
        raise ReaderUnavailable(
            f"pyscard cannot load PC/SC (Debian package `libpcsclite1`): {exc}"
        ) from None
    return SimpleNamespace(
        scard=scard,
        T1=CardConnection.T1_protocol,
        CardConnectionException=CardConnectionException,
        NoCardException=NoCardException,
        readers=readers,
    )


def _available_readers() -> list[Any]:
    try:
        return list(_pyscard().readers())
    except ReaderUnavailable:
        raise
    except Exception as exc:  # pyscard's "no service" exception types differ by platform
        raise ReaderUnavailable(f"PC/SC is not available (is pcscd running?): {exc}") from None


def list_readers() -> list[str]:
    return [str(reader) for reader in _available_readers()]


class CardReader:
    def __init__(self, name: str | None = None) -> None:
        self._wanted = name
        self.name: str | None = None
        self._connection: Any = None
        self._context: Any = None

    # ------------------------------------------------------------------ connection
    def _resolve(self) -> Any:
        available = _available_readers()
        for reader in available:
            if self._wanted is None or str(reader) == self._wanted:
                return reader
        wanted = self._wanted or "any reader"
        names = ", ".join(map(str, available)) or "none"
        raise ReaderUnavailable(f"no reader {wanted!r} (readers: {names})")

    def wait_for_card(self, timeout: float = 30.0) -> None:
        """Wait until a card is in the reader and connect to it exclusively, over T=1."""
        self.close()  # a reader waits for one card at a time
        reader = self._resolve()
        self.name = str(reader)
        deadline = time.monotonic() + timeout
        while not (self._card_present() and self._try_connect(reader)):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise NoCard(f"no card in {self.name} within {timeout:g} s")
            self._wait_for_change(min(_POLL_MS, left_ms))

    def _try_connect(self, reader: Any) -> bool:
        pcsc = _pyscard()
        connection = reader.createConnection()
        try:
            connection.connect(protocol=pcsc.T1, mode=pcsc.scard.SCARD_SHARE_EXCLUSIVE)
        except pcsc.NoCardException:
            connection.release()
            return False  # gone again before we connected: keep waiting
        except pcsc.CardConnectionException as exc:
            connection.release()
            if getattr(exc, "hresult", None) == pcsc.scard.SCARD_E_SHARING_VIOLATION:
                raise ReaderBusy(f"another application holds the card in {self.name}") from None
            return False
        self._connection = connection
        return True

    def close(self) -> None:
        """Disconnect, unpowering the card (pyscard's default disposition)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            # A card already gone cannot be disconnected: only the context is left to release.
            with contextlib.suppress(Exception):
                connection.disconnect()
            connection.release()
        self._release_context()

    def __enter__(self) -> CardReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def atr(self) -> bytes:
        return bytes(self._require_connection().getATR())

    def _require_connection(self) -> Any:
        if self._connection is None:
            raise NoCard("no card connected: wait_for_card first")
        return self._connection

    # ------------------------------------------------------------------ reader state
    def _status_context(self) -> Any:
        scard = _pyscard().scard
        if self._context is None:
            hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            if hresult != scard.SCARD_S_SUCCESS:
                raise ReaderUnavailable("PC/SC is not available (is pcscd running?)")
            self._context = context
        return self._context

    def _release_context(self) -> None:
        context, self._context = self._context, None
        if context is not None:
            _pyscard().scard.SCardReleaseContext(context)

    def _reader_state(self, timeout_ms: int = 0, known: int | None = None) -> int:
        """pcscd's event state of this reader, waiting up to ``timeout_ms`` for a change."""
        scard = _pyscard().scard
        current = scard.SCARD_STATE_UNAWARE if known is None else known
        hresult, states = scard.SCardGetStatusChange(
            self._status_context(), timeout_ms, [(self.name, current)]
        )
        if hresult == scard.SCARD_E_TIMEOUT:
            return current
        if hresult != scard.SCARD_S_SUCCESS:
            raise ReaderUnavailable(f"reader {self.name} is gone")
        return int(states[0][1])

    def _card_present(self) -> bool:
        scard = _pyscard().scard
        state = self._reader_state()
        return bool(state & scard.SCARD_STATE_PRESENT) and not state & scard.SCARD_STATE_MUTE

    def _wait_for_change(self, timeout_ms: int) -> None:
        known = self._reader_state() & ~_pyscard().scard.SCARD_STATE_CHANGED
        self._reader_state(timeout_ms, known)

    def card_present(self) -> bool:
        """Whether pcscd sees a card in this reader now."""
        if self.name is None:
            self.name = str(self._resolve())
        return self._card_present()

    # ------------------------------------------------------------------ APDUs
    def transmit(self, command: bytes) -> tuple[bytes, int]:
        """One APDU: response data and status word. A lost card raises ``CardRemoved``."""
        connection = self._require_connection()
        try:
            data, sw1, sw2 = connection.transmit(list(command))
        except _pyscard().CardConnectionException as exc:
            raise self._lost(exc) from None
        return bytes(data), (sw1 << 8) | sw2

    def _lost(self, exc: Exception) -> CardError:
        scard = _pyscard().scard
        hresult = getattr(exc, "hresult", None)
        if hresult in (scard.SCARD_W_REMOVED_CARD, scard.SCARD_E_NO_SMARTCARD):
            return CardRemoved(f"the card was removed from {self.name}")
        if hresult == scard.SCARD_W_RESET_CARD:
            return CardRemoved(f"the card in {self.name} was reset: start again")
        # A failed exchange often precedes pcscd's next presence poll: look again briefly.
        deadline = time.monotonic() + _REMOVED_GRACE
        while time.monotonic() < deadline:
            if not self._card_present():
                return CardRemoved(f"the card was removed from {self.name}")
            time.sleep(0.1)
        return CardError(f"the card in {self.name} stopped answering: {exc}")

    def command(self, apdu: bytes, name: str) -> bytes:
        """An APDU that must succeed (``9000``); its response data."""
        data, sw = self.transmit(apdu)
        if sw != cp.SW_OK:
            raise status_error(sw, name)
        return data

    # ------------------------------------------------------------------ the profile
    def select_ssse(self) -> None:
        self.command(cp.select_ssse(), "SELECT SSSE")

    def read_file(self, fid: int) -> dict[int, bytes]:
        self.command(cp.select_file(fid), f"SELECT {fid:04X}")
        return {tag: self._read_record(tag) for tag in cp.FILE_TAGS[fid]}

    def _read_record(self, tag: int) -> bytes:
        record = self.command(cp.read_record(tag), f"READ RECORD {tag:02X}")
        try:
            return cp.parse_tlv(tag, record)
        except ValueError as exc:
            raise CardDataError(str(exc)) from None

    def read_records(self) -> dict[int, dict[int, bytes]]:
        self.select_ssse()
        try:
            return {fid: self.read_file(fid) for fid in cp.FILE_TAGS}
        except CardStatusError as exc:
            if exc.sw == cp.SW_RECORD_NOT_FOUND:
                raise CardNotPersonalised("the card is blank (not personalised)") from None
            raise

    def read_card(self) -> CardInfo:
        return card_info(self.atr, self.read_records())

    def read_card_sn(self) -> str:
        self.select_ssse()
        self.command(cp.select_file(cp.EF05), "SELECT EF05")
        return self._read_record(0x01).hex()

    def ensure_card(self, card_sn: str) -> None:
        """The card the flow began with is still in the reader (else ``CardRemoved`` or
        ``CardMismatch``)."""
        if self.read_card_sn() != card_sn:
            raise CardMismatch("another card is in the reader than the one this visit began with")

    def verify_pin(self, pin: str) -> None:
        try:
            apdu = cp.verify(pin)
        except ValueError:
            raise CardDataError("a PIN is 6 digits") from None
        self.command(apdu, "VERIFY")

    def pin_tries_left(self) -> int:
        """Tries left before the PIN blocks (3 when just verified, 0 when blocked)."""
        _, sw = self.transmit(cp.verify_status())
        if sw == cp.SW_OK:
            return PIN_TRIES
        if sw == cp.SW_PIN_BLOCKED:
            return 0
        if sw & 0xFFF0 == 0x63C0:
            return sw & 0x0F
        raise status_error(sw, "VERIFY (status)")

    def get_challenge(self, length: int = 8) -> bytes:
        return self.command(cp.get_challenge(length), "GET CHALLENGE")

    def reset_retry_counter(self, command: bytes) -> None:
        """The issuer-MACed RESET RETRY COUNTER the service prepared, sent as it came."""
        self.command(command, "RESET RETRY COUNTER")

    def change_pin_after_unblock(self, pin: str) -> None:
        """The new PIN: the card takes it only as the command right after the reset."""
        try:
            apdu = cp.change_pin_after_unblock(pin)
        except ValueError:
            raise CardDataError("a PIN is 6 digits") from None
        self.command(apdu, "CHANGE REFERENCE DATA")

    def internal_authenticate(self, key_ref: int, challenge: bytes) -> bytes:
        cryptogram = self.command(
            cp.internal_authenticate(key_ref, challenge), f"INTERNAL AUTHENTICATE {key_ref:02X}"
        )
        if len(cryptogram) != len(challenge):
            raise CardDataError("INTERNAL AUTHENTICATE answered a cryptogram of the wrong length")
        return cryptogram

    def lifecycle(self) -> int:
        """``cardprofile.LIFECYCLE_OPEN`` (blank or being personalised) or ``_LOCKED``."""
        self.select_ssse()
        answer = self.command(cp.get_lifecycle(), "GET LIFECYCLE")
        if len(answer) != 1:
            raise CardDataError("GET LIFECYCLE answered more than one byte")
        return answer[0]
