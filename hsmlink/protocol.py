"""The HSM link's wire format: frames and payloads, spoken by hsm_stub and cardsvc's client. Pure.

A frame (payShield-style)::

    length   2 bytes, big-endian: the number of bytes that follow (at most MAX_FRAME_BODY)
    header   4 bytes, chosen by the client and echoed unchanged (the correlation id)
    command  2 ASCII chars [A-Z0-9], e.g. "TV"
    status   2 ASCII digits, responses only (see ``Status``)
    payload  a msgpack map: the command's request or response ``Struct``

A response carries the same command code as its request (no payShield "advance the second
letter" convention: the header already correlates, and one code per command keeps dispatch
simple). A request whose command is unreadable is answered with command ``ZZ`` and status ``15``.
Responses may come back in any order. A non-ok response carries an ``ErrorDetail`` payload.

Commands (request → response fields; bytes are msgpack bin, a "blob" is a key under the LMK)::

    EC  echo                    data → data
    TK  generate terminal key   kind → clear_key, key_under_lmk, kcv (the blob is bound to kind)
    TV  verify terminal sign-in key_under_lmk, rs, rt, cryptogram → server_cryptogram, session_key
    PB  personalisation blob    admdvs, card_sn, counter_key_under_lmk → blob, kcv_auth, kcv_txn
                                (only a counter's key, only a provisioned region)
    CV  verify card cryptogram  admdvs, card_sn, key_ref, challenge, cryptogram → ()
    PU  PIN unblock MAC         admdvs, card_sn, counter_key_under_lmk, card_challenge → mac
                                (RESET RETRY COUNTER's MAC under the card's K_unblock, over
                                the card's 8-byte challenge; only a counter's key, status 22)
    KC  key check value         key_under_lmk (a terminal key) → kcv
    AM  audit anchor MAC        message → mac (SM4-CMAC under the audit anchor key)
    AV  verify audit anchor     message, mac → () (status 01 if the MAC does not verify)

The audit anchor key is generated inside hsm_stub at the first ``AM`` and kept only under the
LMK in its keystore: no command returns it, so a MAC over cardsvc's audit chain heads can be
made and checked only here. ``AV`` before any ``AM`` is status 20 (no anchor key yet).

Errors::

    ProtocolError
    ├── FramingError     the length prefix is impossible: the stream is lost, close it
    ├── MalformedFrame   a well-delimited frame whose content is invalid (``header`` kept)
    └── MalformedPayload a payload that does not decode into the command's Struct
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import msgspec

MAX_FRAME_BODY = 8192
HEADER_LEN = 4
_LENGTH_LEN = 2
_CODE_LEN = 2
_MIN_REQUEST_BODY = HEADER_LEN + _CODE_LEN
_MIN_RESPONSE_BODY = HEADER_LEN + 2 * _CODE_LEN
MAX_ECHO_LEN = 4096
UNREADABLE_COMMAND = "ZZ"


class Command(enum.StrEnum):
    ECHO = "EC"
    GENERATE_TERMINAL_KEY = "TK"
    VERIFY_TERMINAL = "TV"
    BUILD_PERSONALIZATION = "PB"
    VERIFY_CARD = "CV"
    PIN_UNBLOCK = "PU"
    KEY_CHECK_VALUE = "KC"
    AUDIT_ANCHOR_MAC = "AM"
    VERIFY_AUDIT_ANCHOR = "AV"


class Status(enum.StrEnum):
    OK = "00"
    VERIFICATION_FAILED = "01"  # a cryptogram does not verify
    UNKNOWN_COMMAND = "10"
    MALFORMED_REQUEST = "15"  # unreadable command code or payload
    KEY_ERROR = "20"  # not a key of the right type under the LMK, or a region without keys
    INTERNAL = "68"  # a bug in hsm_stub; logged there
    UNKNOWN_REGION = "21"  # PB: no issuer keys for this region (provisioned offline only)
    KEY_USAGE = "22"  # a key of a kind this command refuses (PB, PU take only a counter's)


class TerminalKind(enum.StrEnum):
    """What a terminal is; bound into its key under the LMK by TK."""

    COUNTER = "counter"
    POS = "pos"
    HIS = "his"
    KIOSK = "kiosk"


class ProtocolError(Exception):
    """Base of every wire-format error."""


class FramingError(ProtocolError):
    """The byte stream cannot be split into frames any more."""


class MalformedFrame(ProtocolError):
    """A delimited frame with invalid content; ``header`` allows an error reply."""

    def __init__(self, message: str, header: bytes) -> None:
        super().__init__(message)
        self.header = header


class MalformedPayload(ProtocolError):
    """The payload is not a valid msgpack encoding of the command's Struct."""


# --- payloads --------------------------------------------------------------------------------

Key16 = Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
# A key under the LMK: SM4-GCM nonce (12) ‖ ciphertext (16) ‖ tag (16).
KeyBlob = Annotated[bytes, msgspec.Meta(min_length=44, max_length=44)]
Admdvs = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{6}$")]
CardSn = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$")]
Kcv = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{6}$")]
MAX_ANCHOR_MESSAGE_LEN = 4096
AnchorMessage = Annotated[bytes, msgspec.Meta(min_length=1, max_length=MAX_ANCHOR_MESSAGE_LEN)]


class Payload(msgspec.Struct, forbid_unknown_fields=True):
    """Base of every payload struct."""


class EchoRequest(Payload):
    data: Annotated[bytes, msgspec.Meta(max_length=MAX_ECHO_LEN)]


class EchoResponse(Payload):
    data: bytes


class GenerateTerminalKeyRequest(Payload):
    kind: TerminalKind


class GenerateTerminalKeyResponse(Payload):
    clear_key: Key16
    key_under_lmk: KeyBlob
    kcv: Kcv


class VerifyTerminalRequest(Payload):
    key_under_lmk: KeyBlob
    rs: Key16
    rt: Key16
    cryptogram: Key16


class VerifyTerminalResponse(Payload):
    server_cryptogram: Key16
    session_key: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


class BuildPersonalizationRequest(Payload):
    admdvs: Admdvs
    card_sn: CardSn
    counter_key_under_lmk: KeyBlob


class BuildPersonalizationResponse(Payload):
    blob: str
    kcv_auth: Kcv
    kcv_txn: Kcv


class VerifyCardRequest(Payload):
    admdvs: Admdvs
    card_sn: CardSn
    key_ref: Annotated[int, msgspec.Meta(ge=1, le=2)]  # 1 = K_auth, 2 = K_txn
    challenge: Key16
    cryptogram: Key16


class VerifyCardResponse(Payload):
    pass


class PinUnblockRequest(Payload):
    admdvs: Admdvs
    card_sn: CardSn
    counter_key_under_lmk: KeyBlob  # the asking counter's: the HSM checks it is a counter's
    card_challenge: Annotated[bytes, msgspec.Meta(min_length=8, max_length=8)]


class PinUnblockResponse(Payload):
    mac: Annotated[bytes, msgspec.Meta(min_length=8, max_length=8)]


class KeyCheckValueRequest(Payload):
    key_under_lmk: KeyBlob


class KeyCheckValueResponse(Payload):
    kcv: Kcv


class AuditAnchorMacRequest(Payload):
    message: AnchorMessage


class AuditAnchorMacResponse(Payload):
    mac: Key16


class VerifyAuditAnchorRequest(Payload):
    message: AnchorMessage
    mac: Key16


class VerifyAuditAnchorResponse(Payload):
    pass


class ErrorDetail(Payload):
    """Payload of every non-ok response: a fixed, non-sensitive reason."""

    reason: str


REQUEST_TYPES: dict[Command, type[Payload]] = {
    Command.ECHO: EchoRequest,
    Command.GENERATE_TERMINAL_KEY: GenerateTerminalKeyRequest,
    Command.VERIFY_TERMINAL: VerifyTerminalRequest,
    Command.BUILD_PERSONALIZATION: BuildPersonalizationRequest,
    Command.VERIFY_CARD: VerifyCardRequest,
    Command.PIN_UNBLOCK: PinUnblockRequest,
    Command.KEY_CHECK_VALUE: KeyCheckValueRequest,
    Command.AUDIT_ANCHOR_MAC: AuditAnchorMacRequest,
    Command.VERIFY_AUDIT_ANCHOR: VerifyAuditAnchorRequest,
}

RESPONSE_TYPES: dict[Command, type[Payload]] = {
    Command.ECHO: EchoResponse,
    Command.GENERATE_TERMINAL_KEY: GenerateTerminalKeyResponse,
    Command.VERIFY_TERMINAL: VerifyTerminalResponse,
    Command.BUILD_PERSONALIZATION: BuildPersonalizationResponse,
    Command.VERIFY_CARD: VerifyCardResponse,
    Command.PIN_UNBLOCK: PinUnblockResponse,
    Command.KEY_CHECK_VALUE: KeyCheckValueResponse,
    Command.AUDIT_ANCHOR_MAC: AuditAnchorMacResponse,
    Command.VERIFY_AUDIT_ANCHOR: VerifyAuditAnchorResponse,
}

_ENCODER = msgspec.msgpack.Encoder()
_PAYLOAD_TYPES: tuple[type[Payload], ...] = (
    *REQUEST_TYPES.values(),
    *RESPONSE_TYPES.values(),
    ErrorDetail,
)
_DECODERS: dict[type[Payload], msgspec.msgpack.Decoder[Any]] = {
    payload_type: msgspec.msgpack.Decoder(payload_type) for payload_type in _PAYLOAD_TYPES
}

P = TypeVar("P", bound=Payload)


def encode_payload(payload: Payload) -> bytes:
    return _ENCODER.encode(payload)


def decode_payload(data: bytes, payload_type: type[P]) -> P:
    """Decode into ``payload_type``; ``MalformedPayload`` if it does not fit."""
    try:
        payload: P = _DECODERS[payload_type].decode(data)
    except msgspec.MsgspecError as exc:
        raise MalformedPayload(f"bad {payload_type.__name__} payload: {exc}") from None
    return payload


# --- frames ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestFrame:
    header: bytes
    command: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class ResponseFrame:
    header: bytes
    command: str
    status: Status
    payload: bytes


def _code_bytes(code: str) -> bytes:
    raw = code.encode("ascii")
    if len(raw) != _CODE_LEN:
        raise ValueError(f"codes are {_CODE_LEN} ASCII characters, got {code!r}")
    return raw


def _frame(body: bytes) -> bytes:
    if len(body) > MAX_FRAME_BODY:
        raise ValueError(f"frame body of {len(body)} bytes exceeds {MAX_FRAME_BODY}")
    return len(body).to_bytes(_LENGTH_LEN, "big") + body


def _check_header(header: bytes) -> None:
    if len(header) != HEADER_LEN:
        raise ValueError(f"header must be {HEADER_LEN} bytes")


def encode_request(header: bytes, command: str, payload: bytes) -> bytes:
    _check_header(header)
    return _frame(header + _code_bytes(command) + payload)


def encode_response(header: bytes, command: str, status: Status, payload: bytes) -> bytes:
    _check_header(header)
    return _frame(header + _code_bytes(command) + _code_bytes(status) + payload)


def _read_code(body: bytes, start: int, header: bytes) -> str:
    raw = body[start : start + _CODE_LEN]
    if len(raw) != _CODE_LEN or not all(0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A for b in raw):
        raise MalformedFrame(f"code {raw!r} is not [A-Z0-9]{{2}}", header)
    return raw.decode("ascii")


def parse_request(body: bytes) -> RequestFrame:
    """A request from a frame body (the bytes after the length prefix)."""
    header = body[:HEADER_LEN]
    command = _read_code(body, HEADER_LEN, header)
    return RequestFrame(header, command, body[_MIN_REQUEST_BODY:])


def parse_response(body: bytes) -> ResponseFrame:
    """A response from a frame body; an unknown status is a ``MalformedFrame``."""
    header = body[:HEADER_LEN]
    command = _read_code(body, HEADER_LEN, header)
    code = _read_code(body, HEADER_LEN + _CODE_LEN, header)
    try:
        status = Status(code)
    except ValueError:
        raise MalformedFrame(f"unknown status {code!r}", header) from None
    return ResponseFrame(header, command, status, body[_MIN_RESPONSE_BODY:])


class FrameDecoder:
    """Incremental splitter: ``feed`` stream bytes, then iterate ``frames()`` for frame bodies.

    ``min_body`` is the smallest valid body for the direction (use ``for_requests`` or
    ``for_responses``). After a ``FramingError`` the stream is lost: discard the decoder.
    """

    def __init__(self, min_body: int) -> None:
        self._min_body = min_body
        self._buffer = bytearray()

    @classmethod
    def for_requests(cls) -> FrameDecoder:
        return cls(_MIN_REQUEST_BODY)

    @classmethod
    def for_responses(cls) -> FrameDecoder:
        return cls(_MIN_RESPONSE_BODY)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def frames(self) -> Iterator[bytes]:
        """Yield every complete frame body buffered so far, in order."""
        while len(self._buffer) >= _LENGTH_LEN:
            length = int.from_bytes(self._buffer[:_LENGTH_LEN], "big")
            if not self._min_body <= length <= MAX_FRAME_BODY:
                raise FramingError(
                    f"frame length {length} outside {self._min_body}..{MAX_FRAME_BODY}"
                )
            end = _LENGTH_LEN + length
            if len(self._buffer) < end:
                return
            body = bytes(self._buffer[_LENGTH_LEN:end])
            del self._buffer[:end]
            yield body
