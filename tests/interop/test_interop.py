"""End-to-end interoperability: an independent terminal, written from docs/protocol.md only,
issues a card at a counter and authenticates it at a POS over plain HTTP."""

from __future__ import annotations

import json
import random
import secrets
from datetime import date
from typing import Any

import aiohttp
import pytest

from tests.interop.identity import make_certno
from tests.interop.terminal import (
    EmulatedCard,
    InteropTerminal,
    ServiceError,
    kcv,
    sm4_ecb,
    unseal_card_keys,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY_REF_TXN = 2


class Admin:
    def __init__(self, http: aiohttp.ClientSession, base_url: str, token: str) -> None:
        self.http, self.base_url = http, base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.http.post(self.base_url + path, json=body, headers=self.headers) as r:
            data = await r.json(content_type=None)
            assert 200 <= r.status < 300, f"POST {path} -> {r.status} {data}"
            return data


async def register_terminal(admin: Admin, http, base_url: str, **body: Any) -> InteropTerminal:
    reg = await admin.post("/v1/terminals", body)
    key = bytes.fromhex(reg["terminal_key"])
    assert len(key) == 16
    assert reg["kcv"].lower() == kcv(key), "kcv is not SM4-ECB(key, 0^16)[:3]"
    return InteropTerminal(http, base_url, reg["terminal_id"], key)


def record(records: dict[str, dict[str, str]], ef: str, tag: int) -> bytes:
    by_tag = {int(k, 16): v for k, v in records[ef].items()}
    return bytes.fromhex(by_tag[tag])


def assert_401(resp) -> None:
    assert resp.status == 401, (resp.status, resp.body)
    assert resp.body["error"]["code"], resp.body


async def test_issue_and_authenticate_card_end_to_end(live_service) -> None:
    base = live_service.base_url
    async with aiohttp.ClientSession() as http:
        admin = Admin(http, base, live_service.admin_token)

        # --- administrator: facility, person, enrolment, terminals -------------------------
        fixmedins_code = f"H{random.randrange(10**10):010d}"
        await admin.post(
            "/v1/facilities",
            {
                "fixmedins_code": fixmedins_code,
                "fixmedins_name": "互通测试医院",
                "type": "hospital",
                "level": "2",
                "agreements": ["310"],
                "credit_rating": "A",
                "status": "active",
            },
        )
        brdy = date(1980 + random.randrange(20), random.randrange(1, 13), random.randrange(1, 29))
        male = random.choice((True, False))
        certno = make_certno("320200", brdy, male)
        person = await admin.post(
            "/v1/persons",
            {
                "certno": certno,
                "psn_name": "互通测试",
                "gend": "1" if male else "2",
                "brdy": brdy.isoformat(),
                "admdvs": "320200",
                "psn_type": "in_service",
            },
        )
        psn_no = person["psn_no"]
        await admin.post(
            f"/v1/persons/{psn_no}/insurances", {"insutype": "310", "begndate": "2020-01-01"}
        )
        counter = await register_terminal(admin, http, base, kind="counter")
        pos = await register_terminal(admin, http, base, kind="pos", fixmedins_code=fixmedins_code)

        # --- counter: issue, personalise, activate ----------------------------------------
        await counter.sign_in()
        issued = (await counter.request("POST", "/v1/cards", {"psn_no": psn_no})).ok()
        card_no, card_sn = issued["card_no"], issued["card_sn"]
        assert len(bytes.fromhex(card_sn)) == 16
        assert record(issued["records"], "ef05", 0x01).hex() == card_sn.lower()
        assert record(issued["records"], "ef05", 0x07).decode("ascii") == card_no
        assert record(issued["records"], "ef06", 0x08).decode("ascii") == certno
        k_auth, k_txn = unseal_card_keys(counter.k_term, card_sn, issued["personalization_blob"])
        pin = f"{secrets.randbelow(10**6):06d}"  # chosen by the cardholder at the counter
        card = EmulatedCard(card_sn, k_auth, k_txn, pin, records=issued["records"])
        (await counter.request("POST", f"/v1/cards/{card_no}/activate")).ok()

        # --- POS: card-present transaction authentication ---------------------------------
        await pos.sign_in()
        body = {"card_no": card_no, "purpose": "transaction"}
        chal = (await pos.request("POST", "/v1/card-auth/challenge", body)).ok()
        card.power_cycle()
        card.verify(pin)
        cryptogram = card.internal_authenticate(KEY_REF_TXN, bytes.fromhex(chal["challenge"]))
        verified = (
            await pos.request(
                "POST",
                "/v1/card-auth/verify",
                {"auth_id": chal["auth_id"], "card_sn": card_sn, "cryptogram": cryptogram.hex()},
            )
        ).ok()
        assert verified["card_token"]
        assert verified["baseinfo"]["psn_no"] == psn_no
        assert certno not in json.dumps(verified), "full certno leaked in the summary"

        # --- negative: card cryptogram under the wrong key --------------------------------
        chal = (await pos.request("POST", "/v1/card-auth/challenge", body)).ok()
        wrong = sm4_ecb(secrets.token_bytes(16), bytes.fromhex(chal["challenge"]))
        resp = await pos.request(
            "POST",
            "/v1/card-auth/verify",
            {"auth_id": chal["auth_id"], "card_sn": card_sn, "cryptogram": wrong.hex()},
        )
        assert_401(resp)

        # --- negative: tampered signature, replayed nonce ---------------------------------
        target = f"/v1/cards/{card_no}"
        headers = counter.signed_headers("GET", target, b"")
        good = headers["X-Signature"]
        tampered = {**headers, "X-Signature": ("0" if good[0] != "0" else "1") + good[1:]}
        assert_401(await counter.send_raw("GET", target, b"", tampered))
        headers = counter.signed_headers("GET", target, b"")
        (await counter.send_raw("GET", target, b"", headers)).ok()
        assert_401(await counter.send_raw("GET", target, b"", headers))


async def test_sign_in_with_wrong_key_is_refused(live_service) -> None:
    async with aiohttp.ClientSession() as http:
        admin = Admin(http, live_service.base_url, live_service.admin_token)
        real = await register_terminal(admin, http, live_service.base_url, kind="counter")
        impostor = InteropTerminal(http, live_service.base_url, real.terminal_id, bytes(16))
        with pytest.raises(ServiceError) as err:
            await impostor.sign_in()
        assert err.value.status == 401, err.value
