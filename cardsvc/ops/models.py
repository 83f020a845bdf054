"""What the readiness probe answers."""

from __future__ import annotations

from typing import Literal

import msgspec


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """``ok``: every dependency answered; ``degraded``: the main job (settlement, which
    needs only the database) can be served but a dependency that some routes need (the HSM:
    sign-in, card issuance, card authentication) is down, named in ``degraded``;
    ``unavailable``: the database is down."""

    status: Literal["ok", "degraded", "unavailable"]
    database: bool
    hsm: bool
    degraded: list[str]

    @property
    def serving(self) -> bool:
        return self.status != "unavailable"
