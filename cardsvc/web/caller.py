"""Who is calling: the administrator or an authenticated terminal session."""

from __future__ import annotations

from typing import Literal

import msgspec

CallerKind = Literal["admin", "counter", "pos", "his", "kiosk"]
TerminalKind = Literal["counter", "pos", "his", "kiosk"]


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    kind: CallerKind
    terminal_id: str | None = None
    session_id: str | None = None
    fixmedins_code: str | None = None

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return "admin" if self.terminal_id is None else f"terminal:{self.terminal_id}"


ADMIN = Caller(kind="admin")
