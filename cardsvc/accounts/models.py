"""Wire structs of personal-account credits (个人账户划入)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from cardsvc.types import PositiveFen, PsnNo, Ref


class CreditEntry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    psn_no: PsnNo
    amount: PositiveFen
    ref: Ref


class CreditBatch(msgspec.Struct, forbid_unknown_fields=True):
    entries: Annotated[list[CreditEntry], msgspec.Meta(min_length=1, max_length=5_000)]


class CreditResult(msgspec.Struct, kw_only=True):
    ref: str
    psn_no: str
    amount: int
    status: Literal["credited", "already_credited"]


class CreditBatchResult(msgspec.Struct, kw_only=True):
    credited: int
    already_credited: int
    entries: list[CreditResult]
