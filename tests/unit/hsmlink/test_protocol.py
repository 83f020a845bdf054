"""hsm_stub wire format: frames, the incremental decoder, payload structs."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmlink import protocol as p

HEADER = b"\x00\x00\x00\x2a"

PAYLOAD_EXAMPLES: list[p.Payload] = [
    p.EchoRequest(data=b"\x00hello"),
    p.EchoResponse(data=b""),
    p.GenerateTerminalKeyRequest(kind=p.TerminalKind.COUNTER),
    p.GenerateTerminalKeyResponse(clear_key=bytes(16), key_under_lmk=bytes(44), kcv="0a1b2c"),
    p.VerifyTerminalRequest(
        key_under_lmk=bytes(44), rs=bytes(16), rt=b"\x01" * 16, cryptogram=b"\x02" * 16
    ),
    p.VerifyTerminalResponse(server_cryptogram=bytes(16), session_key=bytes(32)),
    p.BuildPersonalizationRequest(
        admdvs="320200", card_sn="ab" * 16, counter_key_under_lmk=bytes(44)
    ),
    p.BuildPersonalizationResponse(blob="00" * 60, kcv_auth="000000", kcv_txn="ffffff"),
    p.VerifyCardRequest(
        admdvs="320200", card_sn="0" * 32, key_ref=2, challenge=bytes(16), cryptogram=bytes(16)
    ),
    p.VerifyCardResponse(),
    p.KeyCheckValueRequest(key_under_lmk=bytes(44)),
    p.KeyCheckValueResponse(kcv="abcdef"),
    p.AuditAnchorMacRequest(message=b"anchor"),
    p.AuditAnchorMacResponse(mac=bytes(16)),
    p.VerifyAuditAnchorRequest(message=b"anchor", mac=b"\x03" * 16),
    p.VerifyAuditAnchorResponse(),
    p.ErrorDetail(reason="unknown command"),
]


def decode_all(decoder: p.FrameDecoder, *chunks: bytes) -> list[bytes]:
    bodies: list[bytes] = []
    for chunk in chunks:
        decoder.feed(chunk)
        bodies.extend(decoder.frames())
    return bodies


# --- frames ----------------------------------------------------------------------------------


def test_request_round_trip() -> None:
    payload = p.encode_payload(p.EchoRequest(data=b"abc"))
    wire = p.encode_request(HEADER, p.Command.ECHO, payload)
    assert wire[:2] == (len(wire) - 2).to_bytes(2, "big")
    [body] = decode_all(p.FrameDecoder.for_requests(), wire)
    assert p.parse_request(body) == p.RequestFrame(HEADER, "EC", payload)


@pytest.mark.parametrize("status", list(p.Status))
def test_response_round_trip(status: p.Status) -> None:
    wire = p.encode_response(HEADER, "TV", status, b"\x80")
    [body] = decode_all(p.FrameDecoder.for_responses(), wire)
    assert p.parse_response(body) == p.ResponseFrame(HEADER, "TV", status, b"\x80")


def test_wire_layout_is_length_header_command_status_payload() -> None:
    wire = p.encode_response(b"ABCD", "KC", p.Status.KEY_ERROR, b"xyz")
    assert wire == b"\x00\x0b" + b"ABCD" + b"KC" + b"20" + b"xyz"


def test_byte_by_byte_input_yields_each_frame_once_complete() -> None:
    first = p.encode_request(b"\x00\x00\x00\x01", "EC", b"\x81\xa4data\xc4\x00")
    second = p.encode_request(b"\x00\x00\x00\x02", "TK", b"\x80")
    decoder = p.FrameDecoder.for_requests()
    seen: list[tuple[int, bytes]] = []
    for position, byte in enumerate(first + second):
        seen += [(position, body) for body in decode_all(decoder, bytes([byte]))]
    assert [position for position, _ in seen] == [len(first) - 1, len(first + second) - 1]
    assert [p.parse_request(body).header for _, body in seen] == [
        b"\x00\x00\x00\x01",
        b"\x00\x00\x00\x02",
    ]


def test_many_frames_and_a_partial_tail_in_one_chunk() -> None:
    frames = [p.encode_request(i.to_bytes(4, "big"), "EC", bytes([0x80])) for i in range(5)]
    stream = b"".join(frames)
    decoder = p.FrameDecoder.for_requests()
    bodies = decode_all(decoder, stream[:-3])
    assert len(bodies) == 4
    assert len(decode_all(decoder, stream[-3:])) == 1


def test_frames_before_a_framing_error_are_delivered_first() -> None:
    good = p.encode_request(HEADER, "EC", b"\x80")
    decoder = p.FrameDecoder.for_requests()
    decoder.feed(good + b"\xff\xff" + b"junk")
    frames = decoder.frames()
    assert p.parse_request(next(frames)).header == HEADER
    with pytest.raises(p.FramingError):
        next(frames)


@pytest.mark.parametrize(
    ("new_decoder", "length"),
    [
        pytest.param(p.FrameDecoder.for_requests, p.MAX_FRAME_BODY + 1, id="oversize"),
        pytest.param(p.FrameDecoder.for_requests, 0xFFFF, id="max length field"),
        pytest.param(p.FrameDecoder.for_requests, 0, id="empty"),
        pytest.param(p.FrameDecoder.for_requests, 5, id="request shorter than header+code"),
        pytest.param(p.FrameDecoder.for_responses, 7, id="response without status"),
    ],
)
def test_impossible_length_is_a_framing_error(
    new_decoder: Callable[[], p.FrameDecoder], length: int
) -> None:
    # Raised as soon as the prefix is seen: the decoder must not wait for 64 KiB of garbage.
    with pytest.raises(p.FramingError):
        decode_all(new_decoder(), length.to_bytes(2, "big"))


def test_largest_frame_is_accepted() -> None:
    body = HEADER + b"EC" + bytes(p.MAX_FRAME_BODY - 6)
    [decoded] = decode_all(p.FrameDecoder.for_requests(), len(body).to_bytes(2, "big") + body)
    assert decoded == body


@pytest.mark.parametrize("command", [b"ec", b"E\x00", b"\xff\xfe", b"E "])
def test_unreadable_command_is_malformed_and_keeps_the_header(command: bytes) -> None:
    with pytest.raises(p.MalformedFrame) as caught:
        p.parse_request(HEADER + command + b"\x80")
    assert caught.value.header == HEADER


def test_unknown_status_is_malformed() -> None:
    with pytest.raises(p.MalformedFrame) as caught:
        p.parse_response(HEADER + b"EC" + b"99" + b"\x80")
    assert caught.value.header == HEADER


@pytest.mark.parametrize(
    ("header", "command", "payload"),
    [
        pytest.param(b"abc", "EC", b"", id="short header"),
        pytest.param(HEADER, "E", b"", id="one-char command"),
        pytest.param(HEADER, "EC", bytes(p.MAX_FRAME_BODY), id="oversize"),
    ],
)
def test_encode_refuses_invalid_frames(header: bytes, command: str, payload: bytes) -> None:
    with pytest.raises(ValueError):
        p.encode_request(header, command, payload)


# --- payloads --------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOAD_EXAMPLES, ids=lambda x: type(x).__name__)
def test_payload_round_trip(payload: p.Payload) -> None:
    assert p.decode_payload(p.encode_payload(payload), type(payload)) == payload


def test_every_command_has_request_and_response_types() -> None:
    assert set(p.REQUEST_TYPES) == set(p.RESPONSE_TYPES) == set(p.Command)


def _encoded(value: dict[str, object]) -> bytes:
    return msgspec.msgpack.encode(value)


@pytest.mark.parametrize(
    ("data", "payload_type"),
    [
        pytest.param(b"\xc1", p.EchoRequest, id="not msgpack"),
        pytest.param(_encoded({"data": "text"}), p.EchoRequest, id="str for bytes"),
        pytest.param(_encoded({"data": bytes(4097)}), p.EchoRequest, id="echo too long"),
        pytest.param(_encoded({"data": b"", "extra": 1}), p.EchoRequest, id="unknown field"),
        pytest.param(_encoded({}), p.KeyCheckValueRequest, id="missing field"),
        pytest.param(_encoded({"key_under_lmk": bytes(43)}), p.KeyCheckValueRequest, id="blob"),
        pytest.param(
            _encoded(
                {
                    "admdvs": "32020",
                    "card_sn": "0" * 32,
                    "counter_key_under_lmk": bytes(44),
                }
            ),
            p.BuildPersonalizationRequest,
            id="admdvs 5 digits",
        ),
        pytest.param(
            _encoded(
                {
                    "admdvs": "320200",
                    "card_sn": "A" * 32,
                    "counter_key_under_lmk": bytes(44),
                }
            ),
            p.BuildPersonalizationRequest,
            id="upper-case card_sn",
        ),
        pytest.param(
            _encoded(
                {
                    "admdvs": "320200",
                    "card_sn": "0" * 32,
                    "key_ref": 3,
                    "challenge": bytes(16),
                    "cryptogram": bytes(16),
                }
            ),
            p.VerifyCardRequest,
            id="key_ref 3",
        ),
        pytest.param(
            _encoded(
                {"key_under_lmk": bytes(44), "rs": bytes(15), "rt": bytes(16), "cryptogram": b""}
            ),
            p.VerifyTerminalRequest,
            id="short randoms",
        ),
        pytest.param(_encoded({"message": b""}), p.AuditAnchorMacRequest, id="empty anchor"),
        pytest.param(
            _encoded({"message": bytes(p.MAX_ANCHOR_MESSAGE_LEN + 1)}),
            p.AuditAnchorMacRequest,
            id="anchor too long",
        ),
        pytest.param(
            _encoded({"message": b"anchor", "mac": bytes(15)}),
            p.VerifyAuditAnchorRequest,
            id="short anchor mac",
        ),
    ],
)
def test_invalid_payload_is_malformed(data: bytes, payload_type: type[p.Payload]) -> None:
    with pytest.raises(p.MalformedPayload):
        p.decode_payload(data, payload_type)


# --- properties ------------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=300), max_size=20), st.booleans())
def test_arbitrary_bytes_only_raise_protocol_errors(chunks: list[bytes], requests: bool) -> None:
    decoder = p.FrameDecoder.for_requests() if requests else p.FrameDecoder.for_responses()
    parse = p.parse_request if requests else p.parse_response
    try:
        for body in decode_all(decoder, *chunks):
            frame = parse(body)
            for payload_type in p.REQUEST_TYPES.values():
                try:
                    p.decode_payload(frame.payload, payload_type)
                except p.MalformedPayload:
                    pass
    except p.ProtocolError:
        pass


@given(
    st.lists(st.tuples(st.binary(min_size=4, max_size=4), st.binary(max_size=200)), max_size=10),
    st.lists(st.integers(min_value=0, max_value=3000), max_size=10),
)
def test_any_split_of_valid_frames_decodes_the_same(
    frames: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(p.encode_request(header, "EC", payload) for header, payload in frames)
    points = sorted({0, len(stream), *(cut for cut in cuts if cut < len(stream))})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    decoded = [p.parse_request(body) for body in decode_all(p.FrameDecoder.for_requests(), *chunks)]
    assert [(f.header, f.payload) for f in decoded] == frames
