"""Wire structs of the medical catalog (目录): drugs, consumables and services."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from cardsvc.types import PositiveFen, Text

ITEM_CODE_PATTERN = r"^[A-Za-z0-9._-]{1,50}$"
ItemCode = Annotated[str, msgspec.Meta(pattern=ITEM_CODE_PATTERN)]
Percent = Annotated[int, msgspec.Meta(ge=0, le=100)]


class CatalogItem(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    code: ItemCode
    name: Text
    chrgitm_lv: Literal["A", "B", "C"]
    selfpay_prop: Percent | None = None  # None: the policy's default for class B
    max_price: PositiveFen | None = None
    work_injury: bool = False


class PutItems(msgspec.Struct, forbid_unknown_fields=True):
    items: Annotated[list[CatalogItem], msgspec.Meta(min_length=1, max_length=10_000)]


class ItemsUpserted(msgspec.Struct):
    upserted: int


class CatalogQuery(msgspec.Struct, frozen=True, kw_only=True):
    """One page of ``GET /v1/catalog/items``: items by code, after ``after``."""

    limit: int = 100
    after: str | None = None  # the last code of the previous page
    codes: list[str] | None = None  # exactly these codes (a terminal checking its lines)
    prefix: str | None = None  # codes that begin with it
    name: str | None = None  # names that contain it, case-insensitive


class CatalogPage(msgspec.Struct, kw_only=True):
    items: list[CatalogItem]
    next_after: str | None  # pass as ``after`` for the next page; null on the last page
