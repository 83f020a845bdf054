"""Request decoding and response encoding with msgspec; decoders built once per type."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from cardsvc.errors import InvalidRequest
from cardsvc.types import (
    CARD_NO_PATTERN,
    FACILITY_CODE_PATTERN,
    PSN_NO_PATTERN,
    TERMINAL_ID_PATTERN,
)

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    return decoder


def decode(body: bytes, type_: type[T]) -> T:
    """Decode and validate a JSON body; every failure is a 400 that says where."""
    if not body:
        raise InvalidRequest("a JSON body is required", code="MALFORMED_JSON")
    try:
        result: T = _decoder(type_).decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc), code="VALIDATION_FAILED") from None
    except msgspec.DecodeError:
        raise InvalidRequest("the body is not valid JSON", code="MALFORMED_JSON") from None
    return result


_PATH_PARAMETERS = {
    "psn_no": re.compile(PSN_NO_PATTERN),
    "card_no": re.compile(CARD_NO_PATTERN),
    "fixmedins_code": re.compile(FACILITY_CODE_PATTERN),
    "terminal_id": re.compile(TERMINAL_ID_PATTERN),
}


def path_param(request: web.Request, name: str) -> str:
    """A path parameter checked against its pattern: malformed is 400, not 404."""
    value = request.match_info[name]
    if not _PATH_PARAMETERS[name].match(value):
        raise InvalidRequest(
            f"{name} is malformed", code="INVALID_PATH_PARAMETER", details={"parameter": name}
        )
    return value


async def read_json(request: web.Request, type_: type[T]) -> T:
    return decode(await request.read(), type_)


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(obj), status=status, content_type="application/json")


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    return _encoder.encode({"error": {"code": code, "message": message, "details": details or {}}})
