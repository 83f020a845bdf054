"""The city's facilities, catalog and terminals, pure: what the seed registers via the API.

Facilities of every type and level (hospitals at community, 1, 2, 3; pharmacies), with the
agreements docs/policy.md's table allows at each, credit ratings A and B for the ones the load
uses, and one C-rated hospital and one D-rated pharmacy that it leaves alone. The catalog is
the worked-example items of docs/policy.md plus ``extra`` generated drugs and services, each with a
typical price the request builder uses.
"""

from __future__ import annotations

from typing import Any

import msgspec

from loadtest.state import Facility


class Layout(msgspec.Struct, frozen=True, kw_only=True):
    level3: int
    level2: int
    level1: int
    community: int
    pharmacies: int


LAYOUTS = {
    # Enough facilities that one facility's rows are not the whole table.
    "city": Layout(level3=3, level2=6, level1=12, community=24, pharmacies=60),
    "small": Layout(level3=1, level2=1, level1=1, community=1, pharmacies=2),
}

_HOSPITAL_AGREEMENTS = {
    "3": ["310", "390", "410", "510"],
    "2": ["310", "390", "410", "510"],
    "1": ["310", "390", "410"],
    "community": ["310", "390"],
}
_NAMES = {"3": "人民医院", "2": "第二医院", "1": "卫生院", "community": "社区卫生服务中心"}


def facilities(layout: Layout) -> list[dict[str, Any]]:
    """``POST /v1/facilities`` bodies."""
    out: list[dict[str, Any]] = []
    counts = [
        ("3", layout.level3),
        ("2", layout.level2),
        ("1", layout.level1),
        ("community", layout.community),
    ]
    n = 0
    for level, count in counts:
        for _ in range(count):
            n += 1
            out.append(
                {
                    "fixmedins_code": f"H3202{n:04d}",
                    "fixmedins_name": f"无锡{n}号{_NAMES[level]}",
                    "type": "hospital",
                    "level": level,
                    "agreements": _HOSPITAL_AGREEMENTS[level],
                    "credit_rating": "B" if n % 4 == 0 else "A",
                }
            )
    for p in range(1, layout.pharmacies + 1):
        out.append(
            {
                "fixmedins_code": f"P3202{p:04d}",
                "fixmedins_name": f"无锡{p}号大药房",
                "type": "pharmacy",
                "agreements": ["310", "410"] if p % 3 == 1 else ["310"],
                "credit_rating": "B" if p % 5 == 0 else "A",
            }
        )
    # Held for review (C) and suspended (D): registered, never loaded.
    out.append(
        {
            "fixmedins_code": "H32029998",
            "fixmedins_name": "无锡待审医院",
            "type": "hospital",
            "level": "2",
            "agreements": ["310", "390"],
            "credit_rating": "C",
        }
    )
    out.append(
        {
            "fixmedins_code": "P32029999",
            "fixmedins_name": "无锡暂停药房",
            "type": "pharmacy",
            "agreements": ["310"],
            "credit_rating": "D",
        }
    )
    return out


def loaded(facility: Facility) -> bool:
    """Whether the load settles there (A and B ratings only)."""
    return facility.credit_rating in ("A", "B")


# --- catalog -----------------------------------------------------------------------------

POLICY_CATALOG: list[dict[str, Any]] = [
    {"code": "A-AMOX", "name": "阿莫西林", "chrgitm_lv": "A"},
    {"code": "B-CEF", "name": "头孢克肟", "chrgitm_lv": "B", "selfpay_prop": 10, "max_price": 2000},
    {"code": "B-STENT", "name": "冠脉支架", "chrgitm_lv": "B", "selfpay_prop": 20},
    {"code": "C-VIT", "name": "复合维生素", "chrgitm_lv": "C"},
    {"code": "W-SUT", "name": "清创缝合", "chrgitm_lv": "A", "work_injury": True},
]


class Item(msgspec.Struct, frozen=True):
    code: str
    drug: bool  # pharmacies sell drugs only
    price: int  # typical unit price, fen
    work_injury: bool


def extra_item(n: int) -> dict[str, Any]:
    """Generated item ``n``: a drug (two in three) or a service, class A, B or C."""
    drug = n % 3 != 0
    lv = "ABACBA"[n % 6]
    body: dict[str, Any] = {
        "code": f"{'D' if drug else 'S'}{lv}{n:05d}",
        "name": f"{'药品' if drug else '诊疗'}{n}",
        "chrgitm_lv": lv,
        "work_injury": not drug and n % 2 == 0,
    }
    if lv == "B":
        body["selfpay_prop"] = 5 + n % 16
        if n % 4 == 0:
            body["max_price"] = _price(n, drug)
    return body


def _price(n: int, drug: bool) -> int:
    base = 800 if drug else 3000
    return base + (n * 7919) % (base * 20)


def items(extra: int) -> list[Item]:
    """Every catalog item with its typical price (the request builder's view)."""
    out = [
        Item("A-AMOX", True, 3000, False),
        Item("B-CEF", True, 1800, False),
        Item("C-VIT", True, 2000, False),
        Item("B-STENT", False, 200_000, False),
        Item("W-SUT", False, 50_000, True),
    ]
    for n in range(1, extra + 1):
        body = extra_item(n)
        drug = str(body["code"]).startswith("D")
        out.append(Item(body["code"], drug, _price(n, drug), bool(body["work_injury"])))
    return out
