"""Request decoding and response encoding with msgspec; decoders built once per type."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from aiohttp import web

from cardsvc.errors import InvalidRequest

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


async def read_json(request: web.Request, type_: type[T]) -> T:
    return decode(await request.read(), type_)


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(obj), status=status, content_type="application/json")


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    return _encoder.encode({"error": {"code": code, "message": message, "details": details or {}}})
