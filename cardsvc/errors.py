"""Business errors, each with a stable upper-case code and an HTTP status.

The tree (the error middleware maps every one of these to
``{"error": {"code", "message", "details"}}`` with the class's status)::

    CardsvcError
    ├── InvalidRequest        400  malformed body, query or header
    ├── Unauthenticated       401  missing or bad credentials, signature, session
    ├── Forbidden             403  authenticated, but not allowed for this caller
    ├── NotFound              404
    ├── Conflict              409  duplicates and illegal state transitions
    ├── BusinessRuleViolation 422  the request is well-formed but the rules refuse it
    ├── RateLimited           429
    └── ServiceUnavailable    503  a dependency (database, HSM) is down or too slow

Domain code raises these (or a subclass fixing the code); nothing below the HTTP
edge knows about status codes except through this module.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar


class CardsvcError(Exception):
    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details or {}


class InvalidRequest(CardsvcError):
    status = 400
    default_code = "INVALID_REQUEST"


class Unauthenticated(CardsvcError):
    status = 401
    default_code = "UNAUTHENTICATED"


class Forbidden(CardsvcError):
    status = 403
    default_code = "FORBIDDEN"


class NotFound(CardsvcError):
    status = 404
    default_code = "NOT_FOUND"


class Conflict(CardsvcError):
    status = 409
    default_code = "CONFLICT"


class BusinessRuleViolation(CardsvcError):
    status = 422
    default_code = "BUSINESS_RULE"


class RateLimited(CardsvcError):
    status = 429
    default_code = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(
            message, code=code, details={"retry_after_ms": int(retry_after * 1000) + 1}
        )
        # Whole seconds, for the Retry-After header.
        self.retry_after = max(1, math.ceil(retry_after))


class ServiceUnavailable(CardsvcError):
    status = 503
    default_code = "SERVICE_UNAVAILABLE"
