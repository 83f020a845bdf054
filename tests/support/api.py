"""Test-side helpers: the running service, operator calls, and factories for persons,
facilities, terminals and issued cards (each with unique values).

``Service.admin_token`` is the API token of an operator holding all four roles (so a test
written before roles existed runs unchanged); ``bootstrap_token`` is CARDSVC_ADMIN_TOKEN."""

from __future__ import annotations

import datetime as dt
import random
import secrets
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from cardcrypto import profile
from cardsvc.persons.certno import check_char
from cardsvc.terminal_sdk.client import TerminalClient
from cardsvc.terminal_sdk.softcard import SoftCard

REGION = "320200"


def random_birth_date() -> dt.date:
    return dt.date(1950, 1, 1) + dt.timedelta(days=random.randrange(0, 365 * 50))


def make_certno(brdy: dt.date | None = None, gend: str = "1", region: str = REGION) -> str:
    """A valid identity number; the sequence digit's parity follows the gender."""
    seq = random.randrange(0, 500) * 2 + (1 if gend == "1" else 0)
    first17 = f"{region}{brdy or random_birth_date():%Y%m%d}{seq:03d}"
    return first17 + check_char(first17)


def unique_code(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(5).upper()}"


@dataclass
class Service:
    base_url: str
    admin_token: str
    http: aiohttp.ClientSession
    database_url: str
    bootstrap_token: str = ""

    async def admin(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with self.http.request(
            method, self.base_url + path, json=json, headers=headers
        ) as resp:
            raw = await resp.read()
            return resp.status, msgspec.json.decode(raw) if raw else None

    async def admin_ok(self, method: str, path: str, json: Any = None) -> Any:
        status, body = await self.admin(method, path, json)
        assert status < 300, (status, body)
        return body

    async def facility(self, **overrides: Any) -> dict[str, Any]:
        payload = {
            "fixmedins_code": unique_code("H"),
            "fixmedins_name": "测试医院",
            "type": "hospital",
            "level": "2",
            "agreements": ["310", "390", "410", "510"],
            "credit_rating": "A",
            "status": "active",
        }
        payload.update(overrides)
        result: dict[str, Any] = await self.admin_ok("POST", "/v1/facilities", payload)
        return result

    async def person(
        self, psn_type: str = "in_service", insutypes: tuple[str, ...] = ("310",), **overrides: Any
    ) -> dict[str, Any]:
        brdy = overrides.pop("brdy", random_birth_date())
        gend = overrides.pop("gend", "1")
        payload = {
            "certno": make_certno(brdy, gend),
            "psn_name": "张三",
            "gend": gend,
            "brdy": brdy.isoformat(),
            "admdvs": REGION,
            "psn_type": psn_type,
        }
        payload.update(overrides)
        person: dict[str, Any] = await self.admin_ok("POST", "/v1/persons", payload)
        for insutype in insutypes:
            person = await self.admin_ok(
                "POST",
                f"/v1/persons/{person['psn_no']}/insurances",
                {"insutype": insutype, "begndate": "2020-01-01"},
            )
        person["certno_full"] = payload["certno"]
        return person

    async def terminal(self, kind: str, fixmedins_code: str | None = None) -> TerminalClient:
        payload: dict[str, Any] = {"kind": kind}
        if fixmedins_code is not None:
            payload["fixmedins_code"] = fixmedins_code
        reg = await self.admin_ok("POST", "/v1/terminals", payload)
        client = TerminalClient(
            self.http, self.base_url, reg["terminal_id"], bytes.fromhex(reg["terminal_key"])
        )
        await client.sign_in()
        return client


@dataclass
class IssuedCard:
    card_no: str
    card_sn: str
    psn_no: str
    card: SoftCard
    issuance: dict[str, Any] = field(repr=False)


async def issue_card(
    counter: TerminalClient, psn_no: str, *, activate: bool = True, pin: str = "123456"
) -> IssuedCard:
    """Issue at a counter and personalise a soft card from the sealed blob, as a writer would."""
    issued = await counter.call("POST", "/v1/cards", {"psn_no": psn_no})
    return await personalise(counter, issued, activate=activate, pin=pin)


async def personalise(
    counter: TerminalClient, issued: dict[str, Any], *, activate: bool, pin: str = "123456"
) -> IssuedCard:
    k_auth, k_txn = profile.unseal_card_keys(
        counter.terminal_key, issued["card_sn"], issued["personalization_blob"]
    )
    if activate:
        await counter.call("POST", f"/v1/cards/{issued['card_no']}/activate")
    return IssuedCard(
        issued["card_no"],
        issued["card_sn"],
        issued["psn_no"],
        SoftCard(k_auth, k_txn, pin, card_sn=issued["card_sn"]),
        issued,
    )


async def authenticate_card(
    terminal: TerminalClient, card: IssuedCard, purpose: str = "transaction", pin: str = "123456"
) -> dict[str, Any]:
    """The card-present step: challenge, PIN on the card, cryptogram, verify."""
    ch = await terminal.call(
        "POST", "/v1/card-auth/challenge", {"card_no": card.card_no, "purpose": purpose}
    )
    key_ref = int(ch["key_ref"], 16)
    if key_ref == profile.KEY_REF_TXN:
        card.card.verify(pin)
    cryptogram = card.card.internal_authenticate(key_ref, bytes.fromhex(ch["challenge"]))
    result: dict[str, Any] = await terminal.call(
        "POST",
        "/v1/card-auth/verify",
        {"auth_id": ch["auth_id"], "card_sn": card.card_sn, "cryptogram": cryptogram.hex()},
    )
    card.card.power_cycle()
    return result


POLICY_CATALOG = [
    {"code": "A-AMOX", "name": "阿莫西林", "chrgitm_lv": "A"},
    {"code": "B-CEF", "name": "头孢克肟", "chrgitm_lv": "B", "selfpay_prop": 10, "max_price": 2000},
    {"code": "B-STENT", "name": "冠脉支架", "chrgitm_lv": "B", "selfpay_prop": 20},
    {"code": "C-VIT", "name": "复合维生素", "chrgitm_lv": "C"},
    {"code": "W-SUT", "name": "清创缝合", "chrgitm_lv": "A", "work_injury": True},
]


def lines(*items: tuple[str, int, int]) -> list[dict[str, Any]]:
    return [{"code": c, "unit_price": p, "quantity": q} for c, p, q in items]


@dataclass
class Patient:
    """A person with an active card, authenticated for a transaction at a facility.

    A transaction token pays for one settlement: once ``token`` settled, the next settlement
    sent without a token of its own authenticates the card again (the holder's PIN)."""

    person: dict[str, Any]
    card: IssuedCard
    terminal: TerminalClient
    token: str
    spent: bool = False

    async def fresh_token(self) -> str:
        auth = await authenticate_card(self.terminal, self.card, "transaction")
        return str(auth["card_token"])

    @property
    def psn_no(self) -> str:
        return str(self.person["psn_no"])

    async def settle(
        self,
        insutype: str,
        med_type: str,
        fee: list[dict[str, Any]],
        *,
        key: str | None = None,
        **extra: Any,
    ) -> Any:
        resp = await self.request("/v1/settlements", insutype, med_type, fee, key=key, **extra)
        assert resp.status == 200, resp.body
        return resp.body

    async def request(
        self,
        path: str,
        insutype: str,
        med_type: str,
        fee: list[dict[str, Any]],
        *,
        key: str | None = None,
        token: str | None = None,
        **extra: Any,
    ) -> Any:
        settling = not path.endswith("preview")
        if token is None:
            if settling and self.spent:
                self.token, self.spent = await self.fresh_token(), False
            token = self.token
        body = {
            "card_token": token,
            "insutype": insutype,
            "med_type": med_type,
            "mdtrt_id": unique_code("MD"),
            "feedetail": fee,
            **extra,
        }
        headers = {"Idempotency-Key": key or unique_code("IK")} if settling else {}
        resp = await self.terminal.request("POST", path, body, headers)
        if settling and resp.status == 200 and token == self.token:
            self.spent = True
        return resp


async def patient(
    service: Service,
    terminal: TerminalClient,
    counter: TerminalClient,
    *,
    psn_type: str = "in_service",
    insutypes: tuple[str, ...] = ("310",),
    balance: int = 0,
) -> Patient:
    person = await service.person(psn_type=psn_type, insutypes=insutypes)
    if balance:
        await credit(service, person["psn_no"], balance)
    card = await issue_card(counter, person["psn_no"])
    auth = await authenticate_card(terminal, card, "transaction")
    return Patient(person, card, terminal, auth["card_token"])


async def credit(service: Service, psn_no: str, amount: int) -> None:
    await service.admin_ok(
        "POST",
        "/v1/accounts/credits",
        {"entries": [{"psn_no": psn_no, "amount": amount, "ref": unique_code("CR")}]},
    )
