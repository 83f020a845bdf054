"""Authentication and authorisation at the edge, declared per handler.

``@operator("clerk", "administrator")`` takes an operator holding one of the named roles,
by ``Authorization: Bearer <operator API token>`` or by the console session cookie (with
which every method but GET/HEAD must send ``X-CSRF-Token``, and an ``Origin`` header, if
sent, must name this service); ``@operator_session`` takes the console session only (the
session's own routes). ``@terminal("pos", "his")`` takes a signed terminal request (see
``cardsvc.terminals.signing``) from a session of one of the named kinds;
``@operator_or_terminal(roles=..., kinds=...)`` either. ``@gateway`` takes a national
gateway client's message, whose TIF headers the gateway itself checks
(``cardsvc.national.dispatch``: its refusals are envelopes); ``@public`` takes anyone.

These decorators are the access matrix, declared once: each records who may call its
handler (audiences ``op:<role>``, ``op:session``, terminal kinds, ``gateway``, ``public``),
``declared_access`` reads it back off a route's handler, ``require_declared_access`` refuses
an app with a route that declares nothing, and the authorisation test derives every
route × caller probe from the same declaration.

The bootstrap token (``CARDSVC_ADMIN_TOKEN``) is no audience: ``operator(...,
bootstrap=True)`` (only ``POST /v1/operators``) lets it create the first administrator
while no active one exists; every other route refuses it.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Final, Literal
from urllib.parse import urlsplit

from aiohttp import web

from cardsvc.errors import Forbidden, Unauthenticated
from cardsvc.operators import credentials
from cardsvc.operators.models import ROLES, Role
from cardsvc.web.appkeys import CALLER, OPERATOR_SESSION, SERVICES, SETTINGS, OperatorSession
from cardsvc.web.caller import BOOTSTRAP, Caller, TerminalKind

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Audience = Literal[
    "public",
    "op:administrator",
    "op:clerk",
    "op:reviewer",
    "op:auditor",
    "op:session",
    "counter",
    "pos",
    "his",
    "kiosk",
    "gateway",
]
ACCESS: Final = "__cardsvc_access__"
SESSION_COOKIE: Final = "cardsvc_session"
CSRF_HEADER: Final = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD"})
_TERMINAL_HEADERS = ("X-Terminal-Id", "X-Signature")


def declared_access(handler: object) -> frozenset[Audience] | None:
    """Who may call ``handler``, as its decorator declared; ``None`` when it declares nothing."""
    access = getattr(handler, ACCESS, None)
    return access if isinstance(access, frozenset) else None


def require_declared_access(app: web.Application) -> None:
    """Refuse an app with a route whose handler declares no access (it would be open to all)."""
    for route in app.router.routes():
        if declared_access(route.handler) is None:
            where = route.resource.canonical if route.resource is not None else "?"
            raise RuntimeError(
                f"{route.method} {where}: its handler declares no access"
                " (@public, @operator(...), @operator_session, @terminal(...),"
                " @operator_or_terminal(...) or @gateway)"
            )


def _declare(wrapper: Handler, handler: Handler, access: frozenset[str]) -> Handler:
    setattr(wrapper, ACCESS, access)
    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


def _bearer(request: web.Request) -> str:
    header = request.headers["Authorization"]
    if not header.isascii() or not header.isprintable():
        # aiohttp hands over bytes that are not UTF-8 as surrogates: never a token.
        raise Unauthenticated(
            "the Authorization header must be printable ASCII", code="AUTHORIZATION_HEADER_INVALID"
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated(
            "an operator bearer token is required", code="OPERATOR_CREDENTIALS_MISSING"
        )
    return token


def _is_bootstrap(request: web.Request, token: str) -> bool:
    expected = request.app[SETTINGS].admin_token
    return bool(expected) and hmac.compare_digest(token.encode(), expected.encode())


def _check_csrf(request: web.Request, secret: str) -> None:
    """A cookie arrives with every request the browser makes to this service, whoever
    caused it: a request that changes something must also prove it was made by the
    console's own script (the CSRF token, which no other site can read), and no request
    may come from a page of another origin."""
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise Forbidden("a request from another origin", code="CSRF_FAILED")
    if request.method in _SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent.isascii() or not hmac.compare_digest(
        sent.encode(), credentials.csrf_token(secret).encode()
    ):
        raise Forbidden(f"the {CSRF_HEADER} header is missing or wrong", code="CSRF_FAILED")


async def _session(request: web.Request) -> Caller:
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        raise Unauthenticated(
            "operator credentials are required (a bearer token or the console session)",
            code="OPERATOR_CREDENTIALS_MISSING",
        )
    if not secret.isascii() or not secret.isprintable():  # undecodable bytes: never ours
        raise Unauthenticated("the session is not valid", code="SESSION_INVALID")
    _check_csrf(request, secret)
    caller, info = await request.app[SERVICES].operators.by_session(secret)
    request[OPERATOR_SESSION] = OperatorSession(secret=secret, info=info)
    return caller


async def _operator(request: web.Request, *, bootstrap: bool) -> Caller:
    if "Authorization" not in request.headers:
        return await _session(request)
    token = _bearer(request)
    if _is_bootstrap(request, token):
        if bootstrap:
            return BOOTSTRAP
        raise Unauthenticated(
            "the bootstrap token only creates the first administrator",
            code="BOOTSTRAP_TOKEN_REFUSED",
        )
    return await request.app[SERVICES].operators.by_token(token)


def _check_roles(caller: Caller, roles: frozenset[str]) -> None:
    if caller.kind == "operator" and not roles.intersection(caller.roles):
        raise Forbidden(
            "none of your roles may do this",
            code="ROLE_NOT_ALLOWED",
            details={"allowed": sorted(roles)},
        )


def operator(*roles: Role, bootstrap: bool = False) -> Callable[[Handler], Handler]:
    """An operator holding one of ``roles``. With ``bootstrap`` the bootstrap token is
    taken too (the handler's service decides whether it still may act)."""
    allowed = frozenset(roles)
    assert allowed and allowed <= set(ROLES), roles

    def decorate(handler: Handler) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            caller = await _operator(request, bootstrap=bootstrap)
            _check_roles(caller, allowed)
            request[CALLER] = caller
            return await handler(request)

        return _declare(wrapper, handler, frozenset(f"op:{r}" for r in allowed))

    return decorate


def operator_session(handler: Handler) -> Handler:
    """The console session of any operator (its own routes: who am I, sign out, password)."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        if "Authorization" in request.headers:
            raise Unauthenticated(
                "this is the console session's own route: send its cookie",
                code="SESSION_REQUIRED",
            )
        request[CALLER] = await _session(request)
        return await handler(request)

    return _declare(wrapper, handler, frozenset({"op:session"}))


def terminal(*kinds: TerminalKind, admit_in_handler: bool = False) -> Callable[[Handler], Handler]:
    """A signed request from a session of one of ``kinds``. With ``admit_in_handler`` the
    handler records the nonce and reads the terminal's standing in its own first statement
    (``Caller.admission``): one round trip less on the hot path. It must do so on every
    path that does anything; a success without it is refused as a server error, and a
    request refused before it is admitted here, whose refusal then wins."""
    allowed = frozenset(kinds)

    def decorate(handler: Handler) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            authenticator = request.app[SERVICES].terminal_auth
            caller = await authenticator.authenticate(
                method=request.method,
                path_qs=request.raw_path,
                headers=request.headers,
                read_body=request.read,  # only once the session is known to be live
                admit_in_handler=admit_in_handler,
            )
            if caller.kind not in allowed:
                raise Forbidden(
                    f"a {caller.kind} terminal may not do this",
                    code="TERMINAL_KIND_NOT_ALLOWED",
                    details={"allowed": sorted(allowed)},
                )
            request[CALLER] = caller
            pending = caller.admission
            try:
                response = await handler(request)
            except Exception as exc:
                if pending is not None and not pending.done:
                    # Refused before its first statement (a bad body, say): admitted all
                    # the same, so a replay is refused as one and a disabled terminal as one.
                    await authenticator.admit(pending)
                if pending is not None:
                    await authenticator.refused(pending.session_id, exc)
                raise
            if pending is not None and not pending.done:
                raise RuntimeError(f"{handler.__name__} answered without admitting its request")
            return response

        setattr(wrapper, ACCESS, allowed)
        wrapper.__name__ = handler.__name__
        wrapper.__doc__ = handler.__doc__
        return wrapper

    return decorate


def operator_or_terminal(
    *, roles: tuple[Role, ...], kinds: tuple[TerminalKind, ...]
) -> Callable[[Handler], Handler]:
    """An operator holding one of ``roles`` (when a bearer token or, on a request that is
    not signed, the session cookie is sent) or a signed terminal of one of ``kinds``."""

    def decorate(handler: Handler) -> Handler:
        as_operator, as_terminal = operator(*roles)(handler), terminal(*kinds)(handler)

        async def wrapper(request: web.Request) -> web.StreamResponse:
            headers = request.headers
            if "Authorization" in headers or (
                SESSION_COOKIE in request.cookies
                and not any(h in headers for h in _TERMINAL_HEADERS)
            ):
                return await as_operator(request)
            return await as_terminal(request)

        access = frozenset({*(f"op:{r}" for r in roles), *kinds})
        return _declare(wrapper, handler, access)

    return decorate


def gateway(handler: Handler) -> Handler:
    """A national gateway client (TIF headers). The handler authenticates the message
    itself, before anything else, since the contract answers every refusal as an envelope;
    neither an operator's credential nor a terminal's signature is accepted."""
    setattr(handler, ACCESS, frozenset({"gateway"}))
    return handler


def public(handler: Handler) -> Handler:
    """No authentication (health, metrics, the two sign-in steps)."""
    setattr(handler, ACCESS, frozenset({"public"}))
    return handler
