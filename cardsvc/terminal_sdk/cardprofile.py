"""The card profile's APDU vocabulary (docs/protocol.md, card profile; docs/readers.md), pure.

Shared by the reader SDK, which builds these commands, and the virtual card, which answers
them, so both sides agree byte for byte. ISO 7816-4 commands use CLA ``00``; the project's
personalisation commands use the proprietary class ``80`` and only work before the card is
locked.
"""

from __future__ import annotations

from typing import Final

AID_SSSE: Final = bytes.fromhex("7378312E73682EC9E7BBE1B1A3D5CF")  # "sx1.sh.社会保障" in GBK
EF05: Final = 0xEF05
EF06: Final = 0xEF06
# Short EF identifiers: P2 of WRITE RECORD names the file by these.
SHORT_IDS: Final = {0x05: EF05, 0x06: EF06}

# Record tag → exact value length (None: 1..32 bytes) for each file.
FILE_TAGS: Final[dict[int, dict[int, int | None]]] = {
    EF05: {0x01: 16, 0x02: 1, 0x03: 4, 0x04: None, 0x05: 4, 0x06: 4, 0x07: 9},
    EF06: {0x08: 18, 0x09: 30, 0x0A: 1, 0x0B: 3, 0x0D: 4},
}
MAX_VARIABLE_RECORD = 32

CLA_ISO: Final = 0x00
CLA_SECURE_MESSAGING: Final = 0x0C  # ISO, secure messaging with the header authenticated
CLA_PROPRIETARY: Final = 0x80
INS_SELECT: Final = 0xA4
INS_READ_RECORD: Final = 0xB2
INS_GET_CHALLENGE: Final = 0x84
INS_INTERNAL_AUTHENTICATE: Final = 0x88
INS_VERIFY: Final = 0x20
INS_CHANGE_REFERENCE_DATA: Final = 0x24
INS_RESET_RETRY_COUNTER: Final = 0x2C
# Class 80: personalisation (open card only) and the life-cycle query.
INS_WRITE_RECORD: Final = 0xDC
INS_PUT_KEY: Final = 0xD8
INS_SET_PIN: Final = 0x24
INS_LOCK: Final = 0xF0
INS_GET_LIFECYCLE: Final = 0xCA

LIFECYCLE_OPEN: Final = 0x01
LIFECYCLE_LOCKED: Final = 0x0F
PIN_DIGITS: Final = 6
KCV_LEN: Final = 3

SW_OK: Final = 0x9000
SW_WRONG_LENGTH: Final = 0x6700
SW_SECURITY_NOT_SATISFIED: Final = 0x6982
SW_PIN_BLOCKED: Final = 0x6983
SW_CONDITIONS_NOT_SATISFIED: Final = 0x6985
SW_NO_CURRENT_EF: Final = 0x6986
SW_SM_DATA_INCORRECT: Final = 0x6988
SW_WRONG_DATA: Final = 0x6A80
SW_FILE_NOT_FOUND: Final = 0x6A82
SW_RECORD_NOT_FOUND: Final = 0x6A83
SW_WRONG_P1P2: Final = 0x6A86
SW_REFERENCE_NOT_FOUND: Final = 0x6A88
SW_INS_NOT_SUPPORTED: Final = 0x6D00
SW_CLA_NOT_SUPPORTED: Final = 0x6E00
SW_UNKNOWN: Final = 0x6F00

_MEANINGS: Final = {
    SW_OK: "success",
    SW_WRONG_LENGTH: "wrong length",
    SW_SECURITY_NOT_SATISFIED: "security status not satisfied (VERIFY the PIN first)",
    SW_PIN_BLOCKED: "PIN blocked",
    SW_CONDITIONS_NOT_SATISFIED: "conditions of use not satisfied",
    SW_NO_CURRENT_EF: "command not allowed: no file selected",
    SW_SM_DATA_INCORRECT: "secure messaging data objects incorrect",
    SW_WRONG_DATA: "incorrect data",
    SW_FILE_NOT_FOUND: "file or application not found",
    SW_RECORD_NOT_FOUND: "record not found",
    SW_WRONG_P1P2: "incorrect P1-P2",
    SW_REFERENCE_NOT_FOUND: "referenced data not found",
    SW_INS_NOT_SUPPORTED: "instruction not supported",
    SW_CLA_NOT_SUPPORTED: "class not supported",
    SW_UNKNOWN: "no precise diagnosis",
}


def sw_meaning(sw: int) -> str:
    if sw & 0xFFF0 == 0x63C0:
        return f"wrong PIN, {sw & 0x0F} tries left"
    if sw & 0xFF00 == 0x6C00:
        return f"wrong Le, {sw & 0xFF} bytes available"
    return _MEANINGS.get(sw, "unknown status word")


def pin_to_bcd(pin: str) -> bytes:
    """A 6-digit PIN as 3 BCD bytes; ``ValueError`` for anything else."""
    if len(pin) != PIN_DIGITS or not pin.isascii() or not pin.isdigit():
        raise ValueError("a PIN is 6 digits")
    return bytes.fromhex(pin)


def bcd_to_pin(data: bytes) -> str | None:
    """The PIN in 3 BCD bytes, or None when a nibble is not a decimal digit."""
    digits = data.hex()
    return digits if len(data) * 2 == PIN_DIGITS and digits.isdigit() else None


def apdu(cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None) -> bytes:
    """A short APDU (Lc and Le one byte each; Le 256 is written ``00``)."""
    if len(data) > 255 or (le is not None and not 1 <= le <= 256):
        raise ValueError("short APDU limits exceeded")
    body = bytes([len(data)]) + data if data else b""
    trailer = b"" if le is None else bytes([le % 256])
    return bytes([cla, ins, p1, p2]) + body + trailer


def select_ssse() -> bytes:
    return apdu(CLA_ISO, INS_SELECT, 0x04, 0x00, AID_SSSE)


def select_file(fid: int) -> bytes:
    return apdu(CLA_ISO, INS_SELECT, 0x02, 0x00, fid.to_bytes(2, "big"))


def read_record(tag: int) -> bytes:
    return apdu(CLA_ISO, INS_READ_RECORD, tag, 0x00, le=256)


def get_challenge(length: int = 8) -> bytes:
    return apdu(CLA_ISO, INS_GET_CHALLENGE, 0x00, 0x00, le=length)


def internal_authenticate(key_ref: int, challenge: bytes) -> bytes:
    return apdu(CLA_ISO, INS_INTERNAL_AUTHENTICATE, 0x00, key_ref, challenge, le=256)


def verify(pin: str) -> bytes:
    return apdu(CLA_ISO, INS_VERIFY, 0x00, 0x00, pin_to_bcd(pin))


def verify_status() -> bytes:
    """VERIFY without data: asks for the try counter (``63Cx``), or ``9000`` if verified."""
    return apdu(CLA_ISO, INS_VERIFY, 0x00, 0x00)


def change_pin_after_unblock(pin: str) -> bytes:
    """CHANGE REFERENCE DATA, P1 01 (the new PIN only): accepted right after an unblock."""
    return apdu(CLA_ISO, INS_CHANGE_REFERENCE_DATA, 0x01, 0x00, pin_to_bcd(pin))


def write_record(short_id: int, tag: int, value: bytes) -> bytes:
    return apdu(CLA_PROPRIETARY, INS_WRITE_RECORD, tag, short_id, value)


def put_key(key_ref: int, key: bytes, kcv: bytes) -> bytes:
    return apdu(CLA_PROPRIETARY, INS_PUT_KEY, 0x00, key_ref, key + kcv)


def set_pin(pin: str) -> bytes:
    return apdu(CLA_PROPRIETARY, INS_SET_PIN, 0x00, 0x00, pin_to_bcd(pin))


def lock() -> bytes:
    return apdu(CLA_PROPRIETARY, INS_LOCK, 0x00, 0x00)


def get_lifecycle() -> bytes:
    return apdu(CLA_PROPRIETARY, INS_GET_LIFECYCLE, 0x00, 0x00, le=1)


def tlv(tag: int, value: bytes) -> bytes:
    """A record as the card returns it: ``tag len value`` (one-byte tag and length)."""
    return bytes([tag, len(value)]) + value


def parse_tlv(tag: int, record: bytes) -> bytes:
    """The value of a ``tag len value`` record; ``ValueError`` if it is not that record."""
    if len(record) < 2 or record[0] != tag or record[1] != len(record) - 2:
        raise ValueError(f"record {tag:02X} is not a well-formed tag-length-value")
    return record[2:]
