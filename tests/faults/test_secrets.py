"""No secret or personal datum leaks: run the main flows (and their error paths) against a
system of its own, then search its whole log, every response body and a dump of its
database for keys, session keys, PINs, card tokens and full identity numbers."""

from __future__ import annotations

import subprocess

import msgspec
import pytest

from cardcrypto import profile
from tests.support.api import Service, authenticate_card, issue_card, lines, patient
from tests.support.stack import Stack

pytestmark = pytest.mark.asyncio(loop_scope="session")

PIN = "739164"  # unusual enough not to occur by chance


def _forms(secret: bytes | str) -> list[str]:
    """A secret as it could appear: hex (both cases) or text."""
    if isinstance(secret, bytes):
        return [secret.hex(), secret.hex().upper()]
    return [secret]


async def test_no_secret_in_logs_bodies_or_the_database(stack: Stack, stack_service: Service):
    service = stack_service
    bodies: list[str] = []
    secrets: dict[str, list[str]] = {}

    facility = await service.facility()
    counter = await service.terminal("counter")
    pos = await service.terminal("pos", facility["fixmedins_code"])
    kiosk = await service.terminal("kiosk")
    for name, client in (("counter", counter), ("pos", pos), ("kiosk", kiosk)):
        secrets[f"{name} terminal key"] = _forms(client.terminal_key)
        secrets[f"{name} session key"] = _forms(client._session_key or b"")

    p = await patient(service, pos, counter, balance=9000)
    secrets["certno"] = [p.person["certno_full"], p.person["certno_full"].encode().hex()]
    secrets["card token"] = [p.token]
    secrets["k_auth"] = _forms(p.card.card._keys[profile.KEY_REF_AUTH])
    secrets["k_txn"] = _forms(p.card.card._keys[profile.KEY_REF_TXN])

    other = await service.person()
    card = await issue_card(counter, other["psn_no"], pin=PIN)
    secrets["pin"] = [PIN]
    identify = await authenticate_card(kiosk, card, "identify", pin=PIN)
    secrets["kiosk card token"] = [identify["card_token"]]

    done = await p.settle("310", "11", lines(("A-AMOX", 1000, 1)))
    bodies.append(msgspec.json.encode(done).decode())
    for resp in [
        await p.request("/v1/settlements", "310", "41", lines(("A-AMOX", 1, 1))),
        await p.request("/v1/settlements", "310", "11", lines(("NOPE", 1, 1))),
        await pos.request(
            "POST",
            "/v1/card-auth/verify",
            {"auth_id": "0" * 32, "card_sn": card.card_sn, "cryptogram": "1" * 32},
        ),
        await pos.request(
            "POST",
            "/v1/settlements/preview",
            {
                "card_token": p.token + "x",
                "insutype": "310",
                "med_type": "11",
                "mdtrt_id": "M",
                "feedetail": lines(("A-AMOX", 1, 1)),
            },
        ),
        await kiosk.request("POST", "/v1/kiosk/summary", {"card_token": identify["card_token"]}),
        await pos.request("POST", f"/v1/settlements/{done['setl_id']}/reverse"),
    ]:
        bodies.append(msgspec.json.encode(resp.body).decode())
    _, body = await service.admin(
        "POST",
        "/v1/persons",
        {
            "certno": p.person["certno_full"],
            "psn_name": "x",
            "gend": "1",
            "brdy": "2000-01-01",
            "admdvs": "320200",
            "psn_type": "in_service",
        },
    )
    bodies.append(msgspec.json.encode(body).decode())
    headers = pos.signed_headers("POST", "/v1/card-auth/challenge", b"{}")
    await pos.send("POST", "/v1/card-auth/challenge", b"{}", headers)
    replay = await pos.send("POST", "/v1/card-auth/challenge", b"{}", headers)
    bodies.append(msgspec.json.encode(replay.body).decode())

    dump = subprocess.run(
        ["pg_dump", "--data-only", stack.database_url], capture_output=True, text=True, check=True
    ).stdout
    assert "person:" in dump  # the dump really holds the data
    places = {"log": stack.log_text(), "responses": "\n".join(bodies), "database": dump}
    assert len(places["log"]) > 1000
    leaks = [
        (what, where)
        for what, forms in secrets.items()
        for where, text in places.items()
        if any(form and form in text for form in forms)
        # The database keeps the session key only under the data key, card tokens never.
    ]
    assert leaks == []
