"""Constrained wire types shared by several areas (national interface names)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Admdvs = Annotated[str, msgspec.Meta(pattern=r"^\d{6}$", description="6-digit region code")]
PsnNo = Annotated[str, msgspec.Meta(pattern=r"^\d{16}$")]
FacilityCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9]{1,20}$")]
CardNo = Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9]{9}$")]
CardSn = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{32}$")]
Hex32 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{32}$")]
Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Fen = Annotated[int, msgspec.Meta(ge=0, le=10**13)]
PositiveFen = Annotated[int, msgspec.Meta(gt=0, le=10**13)]

Insutype = Literal["310", "390", "410", "510"]
PsnType = Literal["in_service", "retired", "resident"]
Gender = Literal["1", "2"]
