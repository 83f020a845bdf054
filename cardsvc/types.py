"""Constrained wire types shared by several areas (national interface names)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

PSN_NO_PATTERN = r"^[0-9]{16}$"
FACILITY_CODE_PATTERN = r"^[A-Za-z0-9]{1,20}$"
CARD_NO_PATTERN = r"^[A-Z0-9]{9}$"
TERMINAL_ID_PATTERN = r"^T[0-9]{8}$"
SETL_ID_PATTERN = r"^S[0-9]{8}[0-9a-f]{20}$"

Admdvs = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{6}$", description="6-digit region code")]
PsnNo = Annotated[str, msgspec.Meta(pattern=PSN_NO_PATTERN)]
FacilityCode = Annotated[str, msgspec.Meta(pattern=FACILITY_CODE_PATTERN)]
CardNo = Annotated[str, msgspec.Meta(pattern=CARD_NO_PATTERN)]
CardSn = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{32}$")]
Hex32 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{32}$")]
Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
# Free text: no control characters (PostgreSQL cannot store NUL; none belong in names).
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
Fen = Annotated[int, msgspec.Meta(ge=0, le=10**13)]
PositiveFen = Annotated[int, msgspec.Meta(gt=0, le=10**13)]

# The wire vocabulary (what a request may say). What each value means for benefits (which
# person types a scheme covers, which scheme has an account, which rating suspends) is the
# policy file's; its loader refuses a file that does not cover exactly these values.
Insutype = Literal["310", "390", "410", "510"]
PsnType = Literal["in_service", "retired", "resident"]
CreditRating = Literal["A", "B", "C", "D"]
Gender = Literal["1", "2"]
