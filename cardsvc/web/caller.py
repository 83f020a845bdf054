"""Who is calling: an operator (API token or console session), an authenticated terminal
session, a national gateway client acting for its facility (``cardsvc.national``), or the
bootstrap token creating the first administrator."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from cardsvc.errors import Forbidden

CallerKind = Literal[
    "operator", "bootstrap", "command_line", "counter", "pos", "his", "kiosk", "gateway"
]
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
    # Kind "operator" only: who, with which roles, and by which credential ("token" with
    # its token_id, or "session" whose id is the hex digest of its secret).
    operator_id: str | None = None
    operator_name: str | None = None
    roles: tuple[str, ...] = ()
    credential: Literal["token", "session"] | None = None
    token_id: str | None = None

    def facility(self) -> str:
        """The caller's facility; callers without one (operators, counter, kiosk) are
        refused. A gateway client always has one: the facility it was registered for."""
        if self.fixmedins_code is None:
            raise Forbidden("only a facility's terminals may do this", code="NOT_A_FACILITY")
        return self.fixmedins_code

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        if self.kind == "gateway":
            return f"gateway:{self.gateway_client}"
        if self.kind == "operator":
            return f"operator:{self.operator_id}"
        if self.kind in ("bootstrap", "command_line"):
            return self.kind.replace("_", "-")
        return f"terminal:{self.terminal_id}"

    def audited(self, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """An audit entry's data naming the operator (id and display name as it was then)
        inside the chained entry; other callers are named by ``actor`` alone."""
        if self.kind != "operator":
            return dict(data or {})
        return {
            **(data or {}),
            "operator_id": self.operator_id,
            "operator_name": self.operator_name,
        }


# The bootstrap token creating the first administrator, or `python -m cardsvc create-operator`.
BOOTSTRAP = Caller(kind="bootstrap")
# Someone at the host with the service's settings (python -m cardsvc clearing, ...).
COMMAND_LINE = Caller(kind="command_line")
