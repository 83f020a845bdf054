"""The TIF headers and the envelope, without IO: tables of inputs and what they give."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec
import pytest

from cardsvc.errors import CardsvcError
from cardsvc.national import envelope, tif

DOC = Path(__file__).resolve().parents[3] / "docs" / "national-gateway.md"
NOW = 1_767_225_600


def test_the_documented_signature_vector():
    expected = "9eae54f9e75e4821849bc2ca2b7fe4991bc3637d3c3f24d981ceef4074725961"
    assert tif.signature("1767225600", "s3cr3t", "0123456789abcdef") == expected
    assert expected in DOC.read_text()


def _headers(**overrides: str) -> dict[str, str]:
    headers = {
        "x-tif-paasid": "gw1",
        "x-tif-timestamp": str(NOW),
        "x-tif-nonce": "n" * 16,
        "x-tif-signature": tif.signature(str(NOW), "secret", "n" * 16),
    }
    headers.update(overrides)
    return {k: v for k, v in headers.items() if v != "-"}


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"x-tif-paasid": "-"}, "SIGNATURE_MISSING"),
        ({"x-tif-signature": ""}, "SIGNATURE_MISSING"),
        ({"x-tif-nonce": "n" * 15}, "NONCE_INVALID"),
        ({"x-tif-nonce": "n" * 65}, "NONCE_INVALID"),
        ({"x-tif-nonce": "n" * 10 + " " + "n" * 10}, "NONCE_INVALID"),
        ({"x-tif-paasid": "gw\udcff"}, "SIGNATURE_HEADER_INVALID"),
    ],
)
def test_header_refusals(overrides: dict[str, str], code: str):
    with pytest.raises(CardsvcError) as exc:
        tif.parse(_headers(**overrides))
    assert exc.value.code == code


@pytest.mark.parametrize(
    ("timestamp", "code"),
    [
        (str(NOW - 301), "TIMESTAMP_OUT_OF_WINDOW"),
        (str(NOW + 301), "TIMESTAMP_OUT_OF_WINDOW"),
        ("+1767225600", "TIMESTAMP_INVALID"),
        ("1_767_225_600", "TIMESTAMP_INVALID"),
        ("1767225600.5", "TIMESTAMP_INVALID"),
        (str(NOW - 300), None),
        (str(NOW + 300), None),
    ],
)
def test_timestamp_window(timestamp: str, code: str | None):
    if code is None:
        tif.check_timestamp(timestamp, NOW, 300)
        return
    with pytest.raises(CardsvcError) as exc:
        tif.check_timestamp(timestamp, NOW, 300)
    assert exc.value.code == code


def test_signature_check():
    parsed = tif.parse(_headers())
    tif.check_signature(parsed, "secret")
    with pytest.raises(CardsvcError) as exc:
        tif.check_signature(parsed, "other")
    assert exc.value.code == "SIGNATURE_INVALID"
    upper = tif.parse(_headers(**{"x-tif-signature": parsed.signature.upper()}))
    with pytest.raises(CardsvcError):  # lowercase hex, as the contract says
        tif.check_signature(upper, "secret")


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[1]", b'"x"', b"{}", b'{"infno": 1}', b'{"infno": ""}']
)
def test_not_an_envelope(body: bytes):
    with pytest.raises(envelope.NotAnEnvelope):
        envelope.decode(body)


def test_an_envelope_with_a_bad_field_keeps_its_infno():
    decoded = envelope.decode(b'{"infno": "1101", "opter": 5}')
    assert decoded.envelope is None and decoded.infno == "1101"
    assert decoded.refusal is not None and decoded.refusal.code == "INPUT_INVALID"
    assert "$.opter" in decoded.refusal.message


def test_nulls_and_unknown_fields_are_accepted():
    decoded = envelope.decode(
        b'{"infno": "9001", "msgid": "m1", "sign_no": null, "extra": [1], "input": {}}'
    )
    assert decoded.envelope is not None and decoded.envelope.sign_no is None


def test_body_hash_ignores_key_order_and_spacing_only():
    a = {"data": msgspec.Raw(b'{"a": 1, "b": [1.10, "x"]}')}
    b = {"data": msgspec.Raw(b'{"b":[1.10,"x"],"a":1}')}
    c = {"data": msgspec.Raw(b'{"b":[1.11,"x"],"a":1}')}
    assert envelope.body_hash("2207", a) == envelope.body_hash("2207", b)
    assert envelope.body_hash("2207", a) != envelope.body_hash("2207", c)
    assert envelope.body_hash("2207", a) != envelope.body_hash("2206", a)


def test_refmsgid_and_times():
    moment = dt.datetime(2026, 1, 1, 4, 0, 0, 123_456, tzinfo=dt.UTC)
    assert envelope.refmsgid("320200", moment, 42) == "320200202601011200000000000042"
    assert envelope.refmsgid(None, moment, 42)[:6] == "000000"
    assert envelope.refmsgid("abc", moment, 10**10 + 7)[-10:] == "0000000007"
    assert envelope.wire_time(moment) == "20260101120000123"


def test_answer_fields_and_order():
    moment = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ok = envelope.encode_answer(
        output={"x": 1}, error=None, inf_refmsgid="r", received=moment, answered=moment
    )
    assert ok.startswith(b'{"infcode":0,"inf_refmsgid":"r","refmsg_time":"2026010108000000')
    refused = msgspec.json.decode(
        envelope.encode_answer(
            output={"x": 1},
            error=CardsvcError("why", code="SOME_CODE"),
            inf_refmsgid="r",
            received=moment,
            answered=moment,
        )
    )
    assert refused["infcode"] == -1 and refused["err_msg"] == "[SOME_CODE] why"
    assert refused["output"] == {}


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        ({"data": b'{"psn_no": "3202"}'}, True),
        ({"feedetail": b'[{"feedetl_sn": "1"}, {"psn_no": "3202"}]'}, True),
        ({"data": b'{"psn_no": ""}'}, False),
        ({"signIn": b'{"opter_no": "1"}'}, False),
        ({"data": b'{"nested": {"psn_no": "3202"}}'}, False),
        ({"data": b"5"}, False),
    ],
)
def test_the_insured_region_is_required_when_a_psn_no_is_named(inputs, named: bool):
    normalised = envelope.normalise({k: msgspec.Raw(v) for k, v in inputs.items()})
    assert envelope.names_psn_no(normalised) is named
    without = envelope.decode(b'{"infno": "2202", "msgid": "m"}').envelope
    assert without is not None
    if named:
        with pytest.raises(CardsvcError) as exc:
            envelope.check_insured_region(without, normalised)
        assert exc.value.code == "INPUT_INVALID" and "insuplc_admdvs" in exc.value.message
    else:
        envelope.check_insured_region(without, normalised)
    with_region = envelope.decode(b'{"infno": "2202", "msgid": "m", "insuplc_admdvs": "320200"}')
    assert with_region.envelope is not None
    envelope.check_insured_region(with_region.envelope, normalised)
