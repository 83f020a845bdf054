"""Wire structs of the terminal registry and sign-in."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

from cardsvc.types import FacilityCode, Hex32
from cardsvc.web.caller import TerminalKind

TerminalId = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class RegisterTerminal(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    kind: TerminalKind
    fixmedins_code: FacilityCode | None = None


class TerminalRegistered(msgspec.Struct, kw_only=True):
    terminal_id: str
    kind: str
    fixmedins_code: str | None
    terminal_key: str  # shown once: the only time K_term leaves hsm_stub in clear
    kcv: str


class UpdateTerminal(msgspec.Struct, forbid_unknown_fields=True):
    status: Literal["active", "disabled"]


class TerminalInfo(msgspec.Struct, kw_only=True):
    terminal_id: str
    kind: str
    fixmedins_code: str | None
    kcv: str
    status: str


class SignInStart(msgspec.Struct, forbid_unknown_fields=True):
    terminal_id: TerminalId


class SignInChallenge(msgspec.Struct):
    challenge: str
    expires_at: dt.datetime


class SignInComplete(msgspec.Struct, forbid_unknown_fields=True):
    terminal_id: TerminalId
    challenge: Hex32
    terminal_random: Hex32
    cryptogram: Hex32


class SessionOpened(msgspec.Struct):
    session_id: str
    server_cryptogram: str
    expires_at: dt.datetime
