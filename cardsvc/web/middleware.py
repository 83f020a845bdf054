"""The two middlewares: request context (id, logging, metrics) and error mapping.

Every failure leaves as ``{"error": {"code", "message", "details"}}``: business errors
with their own status, driver failures as 503, aiohttp's HTTP errors with a code of their
own, anything else as a logged 500 that shows no internals.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from cardsvc import db
from cardsvc.errors import CardsvcError, RateLimited
from cardsvc.ops import metrics
from cardsvc.web.appkeys import SETTINGS
from cardsvc.web.codec import error_body

log = structlog.get_logger("cardsvc.http")

_HTTP_CODES = {
    400: "INVALID_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


def _error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> web.Response:
    # The request's log line (request_context) carries the code, and so does the metric.
    structlog.contextvars.bind_contextvars(error_code=code)
    metrics.observe_error(status, code)
    return web.Response(
        body=error_body(code, message, details), status=status, content_type="application/json"
    )


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    response = await handler(request)
    elapsed = time.perf_counter() - started
    response.headers["X-Request-Id"] = request_id
    if request.path.startswith("/v1/"):
        # Answers of the API name persons, cards and operators: no browser or proxy keeps
        # them (a shared counter PC, the back button after logging out).
        response.headers.setdefault("Cache-Control", "no-store")
    route = _route_name(request)
    metrics.observe_request(request.method, route, response.status, elapsed)
    log.info(
        "request",
        method=request.method,
        route=route,
        status=response.status,
        ms=round(elapsed * 1000, 2),
    )
    return response


LONG_RUNNING: Final = "__cardsvc_long_running__"


def long_running(handler: Handler) -> Handler:
    """A route bounded by ``CARDSVC_LONG_REQUEST_TIMEOUT`` instead of the request timeout
    (administrator reads of whole tables). Put it outermost."""
    setattr(handler, LONG_RUNNING, True)
    return handler


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    long = getattr(request.match_info.handler, LONG_RUNNING, False)
    bound = asyncio.timeout(settings.long_request_timeout if long else settings.request_timeout)
    try:
        async with bound:
            return await handler(request)
    except Exception as exc:
        return _error_for(exc, request_timed_out=bound.expired())


def _error_for(exc: Exception, *, request_timed_out: bool) -> web.Response:
    if request_timed_out and isinstance(exc, TimeoutError):
        log.warning("request_timeout")
        return _error_response(503, "REQUEST_TIMEOUT", "the request took too long")
    if isinstance(exc, CardsvcError):
        if exc.status >= 500:
            log.warning("dependency_unavailable", code=exc.code)
        response = _error_response(exc.status, exc.code, exc.message, exc.details)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        response = _error_response(
            exc.status, _HTTP_CODES.get(exc.status, "HTTP_ERROR"), exc.reason
        )
        if "Allow" in exc.headers:  # 405 must say which methods the path takes
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    mapped = db.as_service_error(exc) or db.as_input_error(exc)
    if mapped is not None:
        log.warning("database_error_mapped", code=mapped.code, error=type(exc).__name__)
        return _error_response(mapped.status, mapped.code, mapped.message)
    log.error("unhandled_error", exc_info=exc)
    return _error_response(500, "INTERNAL", "internal error")
