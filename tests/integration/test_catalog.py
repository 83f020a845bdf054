"""The catalog as terminals and the administrator read it: ``GET /v1/catalog/items``, paged
by code, filtered by code prefix and name."""

from __future__ import annotations

import secrets
from urllib.parse import quote

import pytest

from tests.support.api import Service

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_every_terminal_kind_and_the_admin_read_the_catalog_page_by_page(
    service: Service,
):
    prefix = f"Z{secrets.token_hex(4).upper()}-"
    items = [
        {"code": f"{prefix}{n:02d}", "name": f"药品{n} Tablet", "chrgitm_lv": "B"} for n in range(5)
    ]
    items[3] = {**items[3], "name": "阿司匹林 Aspirin", "selfpay_prop": 10, "max_price": 990}
    await service.admin_ok("PUT", "/v1/catalog/items", {"items": items})

    pages, after = [], None
    while True:
        query = f"prefix={prefix}&limit=2" + (f"&after={after}" if after else "")
        page = await service.admin_ok("GET", f"/v1/catalog/items?{query}")
        pages.append([item["code"] for item in page["items"]])
        after = page["next_after"]
        if after is None:
            break
    codes = [item["code"] for item in items]
    assert pages == [codes[0:2], codes[2:4], codes[4:]]

    exact = f"code={prefix}04&code={prefix}01&code=NO-SUCH-CODE&code={prefix}01"
    page = await service.admin_ok("GET", f"/v1/catalog/items?{exact}")
    assert [item["code"] for item in page["items"]] == [codes[1], codes[4]]

    facility = await service.facility()
    for kind in ("counter", "pos", "his", "kiosk"):
        code = facility["fixmedins_code"] if kind in ("pos", "his") else None
        client = await service.terminal(kind, code)
        name = quote("aspirin")
        page = await client.call("GET", f"/v1/catalog/items?prefix={prefix}&name={name}")
        assert page == {
            "items": [
                {
                    "code": f"{prefix}03",
                    "name": "阿司匹林 Aspirin",
                    "chrgitm_lv": "B",
                    "selfpay_prop": 10,
                    "max_price": 990,
                    "work_injury": False,
                }
            ],
            "next_after": None,
        }, kind


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "after=a%20b",
        "prefix=",
        "prefix=%25",
        "name=",
        "code=A&code=a%20b",
        "&".join(["code=A"] * 101),
    ],
)
async def test_a_malformed_catalog_query_is_a_400_naming_the_parameter(
    service: Service, query: str
):
    status, body = await service.admin("GET", f"/v1/catalog/items?{query}")
    assert status == 400 and body["error"]["code"] == "INVALID_QUERY"
    assert body["error"]["details"]["parameter"] == query.split("=")[0]
