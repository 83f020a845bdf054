"""The request and response envelopes, without IO.

A request is an object with ``infno`` (anything else is not an envelope: HTTP 400); its
other fields are checked here (``check``), its ``input`` left as raw JSON nodes for the
transaction's handler. An answer is encoded once, as the bytes that are sent and stored
(``encode_answer``), so that a msgid sent again is answered with exactly those bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from decimal import Decimal
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import msgspec

from cardsvc.errors import CardsvcError, Forbidden, InvalidRequest
from cardsvc.national.units import ENCODER

SHANGHAI = ZoneInfo("Asia/Shanghai")
MSGID_MAX = 30
_REGION = re.compile(r"^[0-9]{6}$")
_INFNO = re.compile(r"^[0-9A-Za-z]{1,10}$")

# Optional text fields of at most n characters.
Max3 = Annotated[str, msgspec.Meta(max_length=3)] | None
Max6 = Annotated[str, msgspec.Meta(max_length=6)] | None
Max10 = Annotated[str, msgspec.Meta(max_length=10)] | None
Max19 = Annotated[str, msgspec.Meta(max_length=19)] | None
Max20 = Annotated[str, msgspec.Meta(max_length=20)] | None
Max30 = Annotated[str, msgspec.Meta(max_length=30)] | None
Max50 = Annotated[str, msgspec.Meta(max_length=50)] | None
Max64 = Annotated[str, msgspec.Meta(max_length=64)] | None
Max200 = Annotated[str, msgspec.Meta(max_length=200)] | None
Max4000 = Annotated[str, msgspec.Meta(max_length=4000)] | None


class Envelope(msgspec.Struct, kw_only=True):
    """The request envelope. Optional fields may be absent, null or ""."""

    infno: Annotated[str, msgspec.Meta(min_length=1)]
    msgid: Max30 = None  # at most MSGID_MAX
    mdtrtarea_admvs: Max6 = None
    insuplc_admdvs: Max6 = None
    recer_sys_code: Max10 = None
    dev_no: Max200 = None
    dev_safe_info: Max4000 = None
    cainfo: Max4000 = None
    signtype: Max20 = None
    infver: Max10 = None
    opter_type: Max3 = None
    opter: Max30 = None
    opter_name: Max50 = None
    inf_time: Max19 = None
    fixmedins_code: Max30 = None
    fixmedins_name: Max200 = None
    sign_no: Max64 = None
    input: dict[str, msgspec.Raw] | None = None


class _Bare(msgspec.Struct):
    """Just enough to tell an envelope with a bad field from no envelope at all."""

    infno: Any = None


_envelope = msgspec.json.Decoder(Envelope)
_bare = msgspec.json.Decoder(_Bare)
_any = msgspec.json.Decoder(float_hook=Decimal)
_canonical = msgspec.json.Encoder(order="sorted", decimal_format="string")


class NotAnEnvelope(InvalidRequest):
    """Not JSON, or no ``infno``: answered with HTTP 400 (not an envelope answer)."""


class Decoded(msgspec.Struct, frozen=True):
    """A decoded request: the envelope, or the infno and the reason it is refused."""

    envelope: Envelope | None
    infno: str
    refusal: CardsvcError | None


def decode(body: bytes) -> Decoded:
    """The envelope; ``NotAnEnvelope`` when there is none. An envelope whose fields do
    not decode comes back with its refusal (INPUT_INVALID), to be answered as an
    envelope (infcode -1)."""
    try:
        return Decoded(_envelope.decode(body), "", None)
    except msgspec.ValidationError as exc:
        reason = str(exc)
    except msgspec.DecodeError:
        raise NotAnEnvelope("the body is not JSON", code="ENVELOPE_INVALID") from None
    try:
        infno = _bare.decode(body).infno
    except msgspec.ValidationError:  # not an object
        infno = None
    if not isinstance(infno, str) or not infno:
        raise NotAnEnvelope(
            "the body is not an envelope: an object with infno", code="ENVELOPE_INVALID"
        )
    return Decoded(None, infno, InvalidRequest(f"envelope: {reason}", code="INPUT_INVALID"))


def check(env: Envelope, client_facility: str) -> None:
    """The envelope's own fields, as the contract says (refusals are envelope answers)."""
    if not _INFNO.match(env.infno):
        raise InvalidRequest("infno must be the transaction's number", code="INPUT_INVALID")
    if not env.msgid:
        raise InvalidRequest(
            f"msgid is required (at most {MSGID_MAX} characters)", code="INPUT_INVALID"
        )
    if not env.msgid.isascii() or not env.msgid.isprintable():
        raise InvalidRequest("msgid must be printable ASCII", code="INPUT_INVALID")
    if not env.fixmedins_code:
        raise InvalidRequest("fixmedins_code is required", code="INPUT_INVALID")
    if env.fixmedins_code != client_facility:
        raise Forbidden(
            "fixmedins_code is not the facility this gateway client is registered for",
            code="NOT_OWN_FACILITY",
        )
    for name in ("mdtrtarea_admvs", "insuplc_admdvs"):
        value = getattr(env, name)
        if value and not _REGION.match(value):
            raise InvalidRequest(f"{name} must be 6 digits", code="INPUT_INVALID")
    if env.input is None:
        raise InvalidRequest("input is required (an object of nodes)", code="INPUT_INVALID")


def normalise(inputs: dict[str, msgspec.Raw] | None) -> dict[str, Any]:
    """The input nodes as plain values (numbers with a fraction as ``Decimal``). A number
    no value can hold (an integer of thousands of digits, an exponent beyond 10^18) is
    refused as INPUT_INVALID."""
    normalised: dict[str, Any] = {}
    for name, raw in (inputs or {}).items():
        try:
            normalised[name] = _any.decode(raw)
        except (msgspec.ValidationError, ArithmeticError):
            raise InvalidRequest(
                f"input.{name} holds a number too large to be a figure", code="INPUT_INVALID"
            ) from None
    return normalised


def body_hash(infno: str, inputs: dict[str, msgspec.Raw] | None) -> bytes:
    """What tells a message from another under one msgid: its infno and its input,
    normalised (key order and spacing do not count; numbers are compared as written)."""
    return hash_of(infno, normalise(inputs))


def hash_of(infno: str, normalised: dict[str, Any]) -> bytes:
    digest = hashlib.sha256(infno.encode())
    digest.update(b"\0")
    if normalised:
        digest.update(_canonical.encode(normalised))
    return digest.digest()


def names_psn_no(normalised: dict[str, Any]) -> bool:
    """Whether an input node (an object, or a list of objects) has a ``psn_no``."""
    for value in normalised.values():
        items = value if isinstance(value, list) else [value]
        if any(isinstance(item, dict) and item.get("psn_no") for item in items):
            return True
    return False


def check_insured_region(env: Envelope, normalised: dict[str, Any]) -> None:
    """``insuplc_admdvs`` is required when the input names a ``psn_no``."""
    if not env.insuplc_admdvs and names_psn_no(normalised):
        raise InvalidRequest(
            "insuplc_admdvs (the insured's region, 6 digits) is required when the input"
            " names a psn_no",
            code="INPUT_INVALID",
        )


def wire_time(moment: dt.datetime) -> str:
    """``yyyyMMddHHmmssSSS`` in Asia/Shanghai."""
    local = moment.astimezone(SHANGHAI)
    return local.strftime("%Y%m%d%H%M%S") + f"{local.microsecond // 1000:03d}"


def refmsgid(region: str | None, moment: dt.datetime, sequence: int) -> str:
    """cardsvc's message id: region (6) + ``yyyyMMddHHmmss`` + 10 digits = 30 characters.
    The region is the envelope's ``mdtrtarea_admvs`` (``000000`` when it has none)."""
    area = region if region and _REGION.match(region) else "000000"
    return f"{area}{moment.astimezone(SHANGHAI):%Y%m%d%H%M%S}{sequence % 10**10:010d}"


class Answer(msgspec.Struct):
    """The response envelope, in the contract's field order."""

    infcode: int
    inf_refmsgid: str
    refmsg_time: str
    respond_time: str
    err_msg: str
    warn_msg: str
    cainfo: str
    signtype: str
    output: Any


def encode_answer(
    *,
    output: dict[str, Any] | None,
    error: CardsvcError | None,
    inf_refmsgid: str,
    received: dt.datetime,
    answered: dt.datetime,
    warn_msg: str = "",
) -> bytes:
    """The answer's bytes: ``infcode 0`` with ``output``, or ``-1`` with ``[CODE] message``
    and ``output {}``."""
    answer = Answer(
        infcode=-1 if error is not None else 0,
        inf_refmsgid=inf_refmsgid,
        refmsg_time=wire_time(received),
        respond_time=wire_time(answered),
        err_msg="" if error is None else f"[{error.code}] {error.message}",
        warn_msg=warn_msg,
        cainfo="",
        signtype="",
        output={} if error is not None or output is None else output,
    )
    return ENCODER.encode(answer)
