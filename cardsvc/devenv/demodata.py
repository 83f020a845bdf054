"""Demo data, loaded once through the operator and counter APIs (as a fund office would):
facilities, terminals and the catalog by an administrator, persons and credits by a clerk.

Facilities of every type and level, the catalog of docs/policy.md's worked examples, a few
persons with enrolments and funded accounts, one terminal of each kind, and one issued,
active card. Terminal keys and the demo card's keys go to files of mode 0600 in the demo
folder: they stand in for the terminals' and the card's secure elements.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import aiohttp

from cardcrypto import profile
from cardsvc.persons.certno import check_char
from cardsvc.terminal_sdk.client import TerminalClient

REGION = "320200"
DEMO_PIN = "123456"
# Set in loaded.json once every demo terminal's key is bound to its kind in the HSM: demo
# data loaded before carries a counter key that can no longer receive card keys.
KINDS_BOUND = "terminal_keys_kind_bound"

FACILITIES = [
    {
        "fixmedins_code": "H32020001",
        "fixmedins_name": "无锡市人民医院",
        "type": "hospital",
        "level": "3",
        "agreements": ["310", "390", "410", "510"],
    },
    {
        "fixmedins_code": "H32020002",
        "fixmedins_name": "无锡市第二医院",
        "type": "hospital",
        "level": "2",
        "agreements": ["310", "390", "410", "510"],
    },
    {
        "fixmedins_code": "H32020003",
        "fixmedins_name": "滨湖区卫生院",
        "type": "hospital",
        "level": "1",
        "agreements": ["310", "390"],
    },
    {
        "fixmedins_code": "H32020004",
        "fixmedins_name": "梁溪社区卫生服务中心",
        "type": "hospital",
        "level": "community",
        "agreements": ["310", "390"],
    },
    {
        "fixmedins_code": "P32020001",
        "fixmedins_name": "无锡大药房",
        "type": "pharmacy",
        "agreements": ["310", "410"],
    },
]

CATALOG = [
    {"code": "A-AMOX", "name": "阿莫西林", "chrgitm_lv": "A"},
    {"code": "B-CEF", "name": "头孢克肟", "chrgitm_lv": "B", "selfpay_prop": 10, "max_price": 2000},
    {"code": "B-STENT", "name": "冠脉支架", "chrgitm_lv": "B", "selfpay_prop": 20},
    {"code": "C-VIT", "name": "复合维生素", "chrgitm_lv": "C"},
    {"code": "W-SUT", "name": "清创缝合", "chrgitm_lv": "A", "work_injury": True},
]

PERSONS = [
    ("张伟", "1", "1975-03-14", "in_service", ["310", "410", "510"], 500000),
    ("王芳", "2", "1990-08-02", "in_service", ["310", "510"], 120000),
    ("李强", "1", "1952-11-20", "retired", ["310"], 300000),
    ("刘洋", "2", "2001-06-30", "resident", ["390"], 0),
]


def demo_certno(brdy: str, gend: str) -> str:
    seq = random.randrange(0, 500) * 2 + (1 if gend == "1" else 0)
    first17 = f"{REGION}{brdy.replace('-', '')}{seq:03d}"
    return first17 + check_char(first17)


class _Admin:
    def __init__(self, http: aiohttp.ClientSession, base_url: str, token: str) -> None:
        self._http, self._base = http, base_url
        self._headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, payload: Any) -> Any:
        async with self._http.request(
            method, self._base + path, json=payload, headers=self._headers
        ) as resp:
            body = await resp.json()
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: {resp.status} {body}")
            return body


def _write_private(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2))
    path.chmod(0o600)


async def load(
    base_url: str, admin_token: str, folder: Path, clerk_token: str | None = None
) -> dict[str, Any]:
    """``admin_token``: an administrator's API token; ``clerk_token`` a clerk's (default: the
    same token, for an operator holding both roles)."""
    marker = folder / "loaded.json"
    if marker.exists():
        loaded: dict[str, Any] = json.loads(marker.read_text())
        if not loaded.get(KINDS_BOUND):
            await rekey_counter(base_url, admin_token, folder)
            loaded[KINDS_BOUND] = True
            marker.write_text(json.dumps(loaded, ensure_ascii=False))
        return loaded
    folder.mkdir(parents=True, exist_ok=True)
    async with aiohttp.ClientSession() as http:
        admin = _Admin(http, base_url, admin_token)
        clerk = _Admin(http, base_url, clerk_token or admin_token)
        for facility in FACILITIES:
            await admin.call("POST", "/v1/facilities", facility)
        await admin.call("PUT", "/v1/catalog/items", {"items": CATALOG})
        psn_nos = await _persons(clerk)
        terminals = await _terminals(admin)
        card = await _demo_card(http, base_url, terminals["counter"], psn_nos[0])
    _write_private(folder / "terminals.json", terminals)
    _write_private(folder / "card.json", card)
    summary = {
        "facilities": len(FACILITIES),
        "catalog_items": len(CATALOG),
        "persons": len(psn_nos),
        "demo_psn_no": psn_nos[0],
        "demo_card_no": card["card_no"],
        "demo_card_pin": DEMO_PIN,
        KINDS_BOUND: True,
    }
    marker.write_text(json.dumps(summary, ensure_ascii=False))
    return summary


async def rekey_counter(base_url: str, admin_token: str, folder: Path) -> str:
    """Register a new demo counter and disable the old one; returns the new terminal id.

    A counter key made before the HSM bound kinds into keys signs in but cannot receive
    card keys (``409 TERMINAL_REKEY_REQUIRED`` on issuing): a new registration carries the
    kind. The demo card, issued before, stays valid (its keys come from the region's)."""
    path = folder / "terminals.json"
    terminals = json.loads(path.read_text())
    old = terminals["counter"]["terminal_id"]
    async with aiohttp.ClientSession() as http:
        admin = _Admin(http, base_url, admin_token)
        reg = await admin.call("POST", "/v1/terminals", {"kind": "counter"})
        await admin.call("PATCH", f"/v1/terminals/{old}", {"status": "disabled"})
    terminals["counter"] = {
        "terminal_id": reg["terminal_id"],
        "terminal_key": reg["terminal_key"],
        "kind": reg["kind"],
        "fixmedins_code": reg["fixmedins_code"],
    }
    _write_private(path, terminals)
    print(
        f"re-registered the demo counter (its key predates key kinds): {old} → {reg['terminal_id']}"
    )
    return str(reg["terminal_id"])


async def _persons(clerk: _Admin) -> list[str]:
    psn_nos, credits = [], []
    for name, gend, brdy, psn_type, insutypes, balance in PERSONS:
        person = await clerk.call(
            "POST",
            "/v1/persons",
            {
                "certno": demo_certno(brdy, gend),
                "psn_name": name,
                "gend": gend,
                "brdy": brdy,
                "admdvs": REGION,
                "psn_type": psn_type,
            },
        )
        for insutype in insutypes:
            await clerk.call(
                "POST",
                f"/v1/persons/{person['psn_no']}/insurances",
                {"insutype": insutype, "begndate": "2020-01-01"},
            )
        if balance:
            credits.append(
                {"psn_no": person["psn_no"], "amount": balance, "ref": f"demo-{person['psn_no']}"}
            )
        psn_nos.append(person["psn_no"])
    await clerk.call("POST", "/v1/accounts/credits", {"entries": credits})
    return psn_nos


async def _terminals(admin: _Admin) -> dict[str, dict[str, str]]:
    wanted = {
        "counter": {"kind": "counter"},
        "kiosk": {"kind": "kiosk"},
        "pos": {"kind": "pos", "fixmedins_code": "H32020001"},
        "pharmacy_pos": {"kind": "pos", "fixmedins_code": "P32020001"},
        "his": {"kind": "his", "fixmedins_code": "H32020002"},
    }
    terminals = {}
    for name, payload in wanted.items():
        reg = await admin.call("POST", "/v1/terminals", payload)
        terminals[name] = {
            "terminal_id": reg["terminal_id"],
            "terminal_key": reg["terminal_key"],
            "kind": reg["kind"],
            "fixmedins_code": reg["fixmedins_code"],
        }
    return terminals


async def _demo_card(
    http: aiohttp.ClientSession, base_url: str, counter: dict[str, str], psn_no: str
) -> dict[str, Any]:
    key = bytes.fromhex(counter["terminal_key"])
    client = TerminalClient(http, base_url, counter["terminal_id"], key)
    issued = await client.call("POST", "/v1/cards", {"psn_no": psn_no})
    k_auth, k_txn = profile.unseal_card_keys(key, issued["card_sn"], issued["personalization_blob"])
    await client.call("POST", f"/v1/cards/{issued['card_no']}/activate")
    return {
        "card_no": issued["card_no"],
        "card_sn": issued["card_sn"],
        "records": issued["records"],
        "k_auth": k_auth.hex(),
        "k_txn": k_txn.hex(),
        "pin": DEMO_PIN,
    }
