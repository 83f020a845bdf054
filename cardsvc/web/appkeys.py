"""Typed keys for what the application and each request carry."""

from __future__ import annotations

import msgspec
from aiohttp import web

from cardsvc.config import Settings
from cardsvc.db import Pool
from cardsvc.hsm.client import HsmClient
from cardsvc.operators.models import SessionInfo
from cardsvc.services import Services
from cardsvc.web.caller import Caller

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", Pool)
HSM = web.AppKey("hsm", HsmClient)
SERVICES = web.AppKey("services", Services)
CALLER = web.RequestKey("caller", Caller)


class OperatorSession(msgspec.Struct, frozen=True):
    """The console session a request came with: its secret (the cookie) and what it is."""

    secret: str
    info: SessionInfo


OPERATOR_SESSION = web.RequestKey("operator_session", OperatorSession)
