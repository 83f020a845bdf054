"""A visit's item codes are looked up in the catalog before the card is asked for anything:
in requests of at most ``CODES_PER_REQUEST`` codes, with the closest codes for an unknown one."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest

from cardsvc.terminal_sdk import flows

CATALOG = ["A-AMOX", "B-CEF", "C-VIT", *(f"X-{n:03d}" for n in range(250))]


class ScriptedCatalog:
    """The catalog route as the service answers it (exact codes, or a code prefix)."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def call(self, method: str, path: str) -> dict[str, Any]:
        assert method == "GET" and path.startswith("/v1/catalog/items?")
        self.paths.append(path)
        query = parse_qs(urlsplit(path).query)
        codes, prefix = query.get("code"), query.get("prefix", [""])[0]
        assert codes is None or len(codes) <= flows.CODES_PER_REQUEST
        items = [
            {"code": c} for c in CATALOG if (codes is None or c in codes) and c.startswith(prefix)
        ]
        return {"items": items, "next_after": None}


async def test_every_code_is_checked_in_bounded_requests():
    catalog = ScriptedCatalog()
    wanted = [f"X-{n:03d}" for n in range(250)] + ["A-AMOX", "A-AMOX"]
    await flows.check_items(cast(Any, catalog), wanted)
    assert len(catalog.paths) == 3  # 251 distinct codes, 100 a request


async def test_unknown_codes_are_named_with_the_closest_known_ones():
    catalog = ScriptedCatalog()
    with pytest.raises(flows.UnknownItems) as unknown:
        await flows.check_items(cast(Any, catalog), ["A-AMOK", "C-VIT", "Q-NONE"])
    assert unknown.value.codes == ["A-AMOK", "Q-NONE"]
    assert unknown.value.suggestions == {"A-AMOK": ["A-AMOX"], "Q-NONE": []}
