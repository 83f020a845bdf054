"""Wire structs of the gateway clients' administration API (``/v1/gateway-clients``)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

from cardsvc.types import FacilityCode

ClientStatus = Literal["active", "disabled"]


class CreateGatewayClient(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    fixmedins_code: FacilityCode


class UpdateGatewayClient(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    status: ClientStatus


class GatewayClient(msgspec.Struct, kw_only=True):
    paasid: str
    fixmedins_code: str
    status: str
    created_at: dt.datetime
    updated_at: dt.datetime


class GatewayClientCreated(msgspec.Struct, kw_only=True):
    """The answer to a registration: the only time the secret is shown."""

    paasid: str
    secret: str
    fixmedins_code: str
    status: str
    created_at: dt.datetime


class GatewayClientList(msgspec.Struct, kw_only=True):
    clients: list[GatewayClient]
