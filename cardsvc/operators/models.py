"""Requests and answers of the operator routes."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

Role = Literal["administrator", "clerk", "reviewer", "auditor"]
ROLES: tuple[Role, ...] = ("administrator", "clerk", "reviewer", "auditor")
OPERATOR_ID_PATTERN = r"^OP[0-9A-F]{10}$"
TOKEN_ID_PATTERN = r"^OT[0-9A-F]{10}$"  # noqa: S105 - an id pattern
LOGIN_PATTERN = r"^[a-z0-9._-]{3,32}$"

Login = Annotated[str, msgspec.Meta(pattern=LOGIN_PATTERN)]
DisplayName = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")]
# Bounds of the field only; the password rules (cardsvc.operators.passwords) say why.
Password = Annotated[str, msgspec.Meta(max_length=1024)]
Roles = Annotated[list[Role], msgspec.Meta(min_length=1, max_length=4)]
Status = Literal["active", "disabled"]


class Operator(msgspec.Struct, kw_only=True):
    operator_id: str
    login: str
    display_name: str
    roles: list[Role]
    status: Status
    created_at: dt.datetime
    updated_at: dt.datetime


class OperatorBrief(msgspec.Struct, kw_only=True):
    operator_id: str
    login: str
    display_name: str
    roles: list[Role]


class CreateOperator(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    login: Login
    display_name: DisplayName
    roles: Roles
    password: Password


class UpdateOperator(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    display_name: DisplayName | msgspec.UnsetType = msgspec.UNSET
    roles: Roles | msgspec.UnsetType = msgspec.UNSET
    status: Status | msgspec.UnsetType = msgspec.UNSET


class ResetPassword(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    password: Password


class ChangePassword(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    current_password: Password
    new_password: Password


class LoginRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    login: Annotated[str, msgspec.Meta(max_length=64)]
    password: Password


class SessionInfo(msgspec.Struct, kw_only=True):
    operator: OperatorBrief
    csrf_token: str
    expires_at: dt.datetime
    idle_expires_at: dt.datetime


class CreateToken(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")]
    expires_in_days: Annotated[int, msgspec.Meta(ge=1, le=365)] = 90


class NewToken(msgspec.Struct, kw_only=True):
    token_id: str
    name: str
    token: str
    expires_at: dt.datetime


class TokenInfo(msgspec.Struct, kw_only=True):
    token_id: str
    name: str
    created_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


class TokenList(msgspec.Struct, kw_only=True):
    items: list[TokenInfo]


class OperatorPage(msgspec.Struct, kw_only=True):
    items: list[Operator]
    page: int
    page_size: int
    total: int
