"""Authentication and authorisation at the edge, declared per handler.

``@admin_only`` takes ``Authorization: Bearer <token>``; ``@terminal("pos", "his")``
takes a signed terminal request (see ``cardsvc.terminals.signing``) from a session of one of
the named kinds; ``@gateway`` takes a national gateway client's message, whose TIF headers
the gateway itself checks (``cardsvc.national.dispatch``: its refusals are envelopes);
``@public`` takes anyone. These decorators are the access matrix, declared
once: each records who may call its handler, ``declared_access`` reads it back off a route's
handler, ``require_declared_access`` refuses an app with a route that declares nothing, and
the authorisation test derives every route × caller probe from the same declaration.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Final, Literal

from aiohttp import web

from cardsvc.errors import Forbidden, Unauthenticated
from cardsvc.web.appkeys import CALLER, SERVICES, SETTINGS
from cardsvc.web.caller import ADMIN, Caller, TerminalKind

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Audience = Literal["public", "admin", "counter", "pos", "his", "kiosk", "gateway"]
ACCESS: Final = "__cardsvc_access__"


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
                " (@public, @admin_only, @terminal(...), @admin_or_terminal(...) or @gateway)"
            )


def _check_admin(request: web.Request) -> Caller:
    header = request.headers.get("Authorization", "")
    if not header.isascii() or not header.isprintable():
        # aiohttp hands over bytes that are not UTF-8 as surrogates: never a token.
        raise Unauthenticated(
            "the Authorization header must be printable ASCII", code="ADMIN_HEADER_INVALID"
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("admin bearer token required", code="ADMIN_TOKEN_MISSING")
    expected = request.app[SETTINGS].admin_token
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthenticated("admin bearer token is not valid", code="ADMIN_TOKEN_INVALID")
    return ADMIN


def admin_only(handler: Handler) -> Handler:
    async def wrapper(request: web.Request) -> web.StreamResponse:
        request[CALLER] = _check_admin(request)
        return await handler(request)

    setattr(wrapper, ACCESS, frozenset({"admin"}))
    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


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


def admin_or_terminal(*kinds: TerminalKind) -> Callable[[Handler], Handler]:
    """The administrator (when an Authorization header is sent) or a signed terminal."""

    def decorate(handler: Handler) -> Handler:
        as_admin, as_terminal = admin_only(handler), terminal(*kinds)(handler)

        async def wrapper(request: web.Request) -> web.StreamResponse:
            if "Authorization" in request.headers:
                return await as_admin(request)
            return await as_terminal(request)

        setattr(wrapper, ACCESS, frozenset({"admin", *kinds}))
        wrapper.__name__ = handler.__name__
        wrapper.__doc__ = handler.__doc__
        return wrapper

    return decorate


def gateway(handler: Handler) -> Handler:
    """A national gateway client (TIF headers). The handler authenticates the message
    itself, before anything else, since the contract answers every refusal as an envelope;
    neither the administrator's token nor a terminal's signature is accepted."""
    setattr(handler, ACCESS, frozenset({"gateway"}))
    return handler


def public(handler: Handler) -> Handler:
    """No authentication (health, metrics, the two sign-in steps)."""
    setattr(handler, ACCESS, frozenset({"public"}))
    return handler
