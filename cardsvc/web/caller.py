"""Who is calling: the administrator, an authenticated terminal session, or a national
gateway client acting for its facility (``cardsvc.national``)."""

from __future__ import annotations

from typing import Literal

import msgspec

from cardsvc.errors import Forbidden

CallerKind = Literal["admin", "counter", "pos", "his", "kiosk", "gateway"]
TerminalKind = Literal["counter", "pos", "his", "kiosk"]
ANY_TERMINAL: tuple[TerminalKind, ...] = ("counter", "pos", "his", "kiosk")
SETTLING_TERMINALS: tuple[TerminalKind, ...] = ("pos", "his")


class Admission(msgspec.Struct, kw_only=True):
    """A signed request's nonce, not yet recorded, and its terminal and session, whose
    standing is not yet read (``cardsvc.terminals.admission``): a handler that takes over
    its admission must run it before anything else it does, and mark it ``done``."""

    terminal_id: str
    nonce: str
    session_id: str
    done: bool = False


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    kind: CallerKind
    terminal_id: str | None = None
    session_id: str | None = None
    fixmedins_code: str | None = None
    # Set only for a handler declared with ``terminal(..., admit_in_handler=True)``.
    admission: Admission | None = None
    # The gateway client's paasid, for kind "gateway" only (which has no terminal session).
    gateway_client: str | None = None

    def facility(self) -> str:
        """The caller's facility; callers without one (admin, counter, kiosk) are refused.
        A gateway client always has one: the facility it was registered for."""
        if self.fixmedins_code is None:
            raise Forbidden("only a facility's terminals may do this", code="NOT_A_FACILITY")
        return self.fixmedins_code

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        if self.kind == "gateway":
            return f"gateway:{self.gateway_client}"
        return "admin" if self.terminal_id is None else f"terminal:{self.terminal_id}"


ADMIN = Caller(kind="admin")
