"""Request decoding and response encoding with msgspec; decoders built once per type."""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from cardsvc.errors import InvalidRequest
from cardsvc.types import (
    CARD_NO_PATTERN,
    FACILITY_CODE_PATTERN,
    PSN_NO_PATTERN,
    SETL_ID_PATTERN,
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
    "setl_id": re.compile(SETL_ID_PATTERN),
}


def path_param(request: web.Request, name: str) -> str:
    """A path parameter checked against its pattern: malformed is 400, not 404."""
    value = request.match_info[name]
    if not _PATH_PARAMETERS[name].fullmatch(value):
        raise InvalidRequest(
            f"{name} is malformed", code="INVALID_PATH_PARAMETER", details={"parameter": name}
        )
    return value


_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_LIMIT = re.compile(r"^[0-9]{1,4}$")


def parse_date(value: str, name: str, code: str) -> dt.date:
    """A YYYY-MM-DD date (only that form); anything else is a 400 naming the parameter."""
    try:
        if _DATE.fullmatch(value):
            return dt.date.fromisoformat(value)
    except ValueError:
        pass
    raise InvalidRequest(
        f"{name} must be a date YYYY-MM-DD", code=code, details={"parameter": name}
    )


def path_date(request: web.Request, name: str) -> dt.date:
    return parse_date(request.match_info[name], name, "INVALID_PATH_PARAMETER")


def query_date(request: web.Request, name: str, default: dt.date) -> dt.date:
    raw = request.query.get(name)
    return default if raw is None else parse_date(raw, name, "INVALID_QUERY")


def query_limit(request: web.Request, default: int = 100, most: int = 1000) -> int:
    raw = request.query.get("limit", str(default))
    if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= most:
        raise InvalidRequest(
            f"limit must be 1-{most}", code="INVALID_QUERY", details={"parameter": "limit"}
        )
    return int(raw)


def query_choice(request: web.Request, name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``; the first is the default."""
    raw = request.query.get(name, choices[0])
    if raw not in choices:
        raise InvalidRequest(
            f"{name} must be one of {', '.join(choices)}",
            code="INVALID_QUERY",
            details={"parameter": name},
        )
    return raw


async def read_json(request: web.Request, type_: type[T], default: T | None = None) -> T:
    """The decoded body; an empty body is ``default`` where the operation has one."""
    body = await request.read()
    if not body and default is not None:
        return default
    return decode(body, type_)


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(obj), status=status, content_type="application/json")


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    return _encoder.encode({"error": {"code": code, "message": message, "details": details or {}}})


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def body_limit(max_bytes: int) -> Callable[[_Handler], _Handler]:
    """A route whose bodies may be larger than ``CARDSVC_MAX_BODY_BYTES`` (never smaller).
    Put it outermost, so that authentication reads the body under this limit too."""

    def decorate(handler: _Handler) -> _Handler:
        @functools.wraps(handler)  # keeps the access declaration of the auth decorator
        async def wrapper(request: web.Request) -> web.StreamResponse:
            limit = max(max_bytes, request.client_max_size)
            return await handler(request.clone(client_max_size=limit))

        return wrapper

    return decorate
