"""The administration API: persons, enrolments, account credits, facilities, terminals,
catalog and injury cases."""

from __future__ import annotations

import datetime as dt

import asyncpg
import pytest

from tests.support.api import Service, make_certno, unique_code

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _person_payload(**overrides):
    payload = {
        "certno": make_certno(dt.date(1980, 5, 17)),
        "psn_name": "李四",
        "gend": "1",
        "brdy": "1980-05-17",
        "admdvs": "320200",
        "psn_type": "in_service",
    }
    payload.update(overrides)
    return payload


async def test_person_is_stored_encrypted_and_shown_masked(service: Service):
    payload = _person_payload()
    person = await service.admin_ok("POST", "/v1/persons", payload)
    certno = payload["certno"]
    assert person["certno"] == certno[:2] + "*" * 14 + certno[16:]
    assert person["birth_year"] == int(certno[6:10]) and "brdy" not in person
    assert person["psn_no"].startswith("320200") and len(person["psn_no"]) == 16
    assert person["balc"] == 0 and person["insurances"] == []
    fetched = await service.admin_ok("GET", f"/v1/persons/{person['psn_no']}")
    assert fetched == person
    conn = await asyncpg.connect(service.database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM persons WHERE psn_no = $1", person["psn_no"])
    finally:
        await conn.close()
    raw = b"".join(bytes(v) if isinstance(v, bytes) else str(v).encode() for v in row.values())
    assert certno.encode() not in raw
    assert certno[6:14].encode() not in raw


@pytest.mark.parametrize(
    "overrides",
    [
        {"certno": "320200198005171234"},  # wrong check digit (almost surely)
        {"certno": "32020019800517123"},  # 17 chars
        {"certno": "32020019801317123X"},  # month 13
        {"brdy": "1981-05-17"},  # differs from the number
        {"gend": "2"},  # differs from the number
    ],
)
async def test_invalid_identity_number_is_400(service: Service, overrides):
    payload = _person_payload(**overrides)
    if "certno" in overrides and overrides["certno"] == "320200198005171234":
        from cardsvc.persons.certno import check_char

        if check_char(payload["certno"][:17]) == "4":
            payload["certno"] = payload["certno"][:17] + "5"
    status, body = await service.admin("POST", "/v1/persons", payload)
    assert status == 400, body
    assert body["error"]["code"] in {"INVALID_CERTNO", "VALIDATION_FAILED"}


async def test_duplicate_person_is_409(service: Service):
    payload = _person_payload()
    await service.admin_ok("POST", "/v1/persons", payload)
    status, body = await service.admin("POST", "/v1/persons", payload)
    assert status == 409 and body["error"]["code"] == "PERSON_EXISTS"


async def test_bad_bodies_are_400_with_codes(service: Service):
    async with service.http.post(
        service.base_url + "/v1/persons",
        data=b"{not json",
        headers={"Authorization": f"Bearer {service.admin_token}"},
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "MALFORMED_JSON"
    status, body = await service.admin("POST", "/v1/persons", {**_person_payload(), "extra": 1})
    assert status == 400 and body["error"]["code"] == "VALIDATION_FAILED"
    assert "extra" in body["error"]["message"]
    status, body = await service.admin("GET", "/v1/persons/nope")
    assert status == 400 and body["error"]["code"] == "INVALID_PATH_PARAMETER"
    status, body = await service.admin("GET", "/v1/persons/3202009999999997")
    assert status == 404 and body["error"]["code"] == "PERSON_NOT_FOUND"
    for bad in (
        "/v1/facilities/%00",
        "/v1/persons/3202000000000001%0A",
        "/v1/persons/٣٢٠٢000000000001",
    ):
        status, body = await service.admin("GET", bad)
        assert status == 400 and body["error"]["code"] == "INVALID_PATH_PARAMETER", bad
    for field in ("psn_name", "certno"):
        status, body = await service.admin(
            "POST", "/v1/persons", {**_person_payload(), field: "张\u0000三"}
        )
        assert status == 400 and body["error"]["code"] == "VALIDATION_FAILED", body


async def test_enrolment_rules(service: Service):
    resident = await service.person(psn_type="resident", insutypes=())
    status, body = await service.admin(
        "POST",
        f"/v1/persons/{resident['psn_no']}/insurances",
        {"insutype": "310", "begndate": "2024-01-01"},
    )
    assert status == 422 and body["error"]["code"] == "PSN_TYPE_NOT_ALLOWED"
    person = await service.admin_ok(
        "POST",
        f"/v1/persons/{resident['psn_no']}/insurances",
        {"insutype": "390", "begndate": "2024-01-01", "enddate": "2030-12-31"},
    )
    assert person["insurances"] == [
        {"insutype": "390", "begndate": "2024-01-01", "enddate": "2030-12-31"}
    ]
    status, body = await service.admin(
        "POST",
        f"/v1/persons/{resident['psn_no']}/insurances",
        {"insutype": "390", "begndate": "2024-01-01", "enddate": "2023-12-31"},
    )
    assert status == 400 and body["error"]["code"] == "INVALID_DATES"


async def test_account_credits_are_idempotent_per_ref(service: Service):
    a = await service.person()
    b = await service.person()
    ref_a, ref_b = unique_code("CR"), unique_code("CR")
    batch = {
        "entries": [
            {"psn_no": a["psn_no"], "amount": 50000, "ref": ref_a},
            {"psn_no": b["psn_no"], "amount": 1234, "ref": ref_b},
        ]
    }
    first = await service.admin_ok("POST", "/v1/accounts/credits", batch)
    assert first["credited"] == 2 and first["already_credited"] == 0
    again = await service.admin_ok("POST", "/v1/accounts/credits", batch)
    assert again["credited"] == 0 and again["already_credited"] == 2
    assert (await service.admin_ok("GET", f"/v1/persons/{a['psn_no']}"))["balc"] == 50000
    assert (await service.admin_ok("GET", f"/v1/persons/{b['psn_no']}"))["balc"] == 1234

    changed = {"entries": [{"psn_no": a["psn_no"], "amount": 50001, "ref": ref_a}]}
    status, body = await service.admin("POST", "/v1/accounts/credits", changed)
    assert status == 409 and body["error"]["code"] == "IDEMPOTENCY_MISMATCH"
    assert body["error"]["details"]["refs"] == [ref_a]

    unknown = {"entries": [{"psn_no": "3202009999999998", "amount": 1, "ref": unique_code("CR")}]}
    status, body = await service.admin("POST", "/v1/accounts/credits", unknown)
    assert status == 404 and body["error"]["code"] == "PERSON_NOT_FOUND"

    ledger = await service.admin_ok("GET", "/v1/ledger/proof")
    assert ledger["ok"], ledger


async def test_facilities(service: Service):
    pharmacy = await service.facility(type="pharmacy", level=None, agreements=["310", "410"])
    assert pharmacy["level"] is None and pharmacy["agreements"] == ["310", "410"]
    status, body = await service.admin(
        "POST",
        "/v1/facilities",
        {
            "fixmedins_code": unique_code("P"),
            "fixmedins_name": "x",
            "type": "pharmacy",
            "level": "2",
        },
    )
    assert status == 400 and body["error"]["code"] == "INVALID_LEVEL"
    status, body = await service.admin(
        "POST",
        "/v1/facilities",
        {"fixmedins_code": pharmacy["fixmedins_code"], "fixmedins_name": "x", "type": "pharmacy"},
    )
    assert status == 409 and body["error"]["code"] == "FACILITY_EXISTS"
    code = pharmacy["fixmedins_code"]
    updated = await service.admin_ok("PATCH", f"/v1/facilities/{code}", {"agreements": ["310"]})
    assert updated["agreements"] == ["310"]
    assert updated["fixmedins_name"] == pharmacy["fixmedins_name"]
    status, body = await service.admin("PATCH", "/v1/facilities/NOPE1", {"status": "active"})
    assert status == 404
    # The rating has its own route (a reason and a history): PATCH no longer takes it.
    status, body = await service.admin("PATCH", f"/v1/facilities/{code}", {"credit_rating": "C"})
    assert status == 400


async def test_terminal_registration_rules(service: Service):
    facility = await service.facility()
    reg = await service.admin_ok(
        "POST", "/v1/terminals", {"kind": "his", "fixmedins_code": facility["fixmedins_code"]}
    )
    assert len(bytes.fromhex(reg["terminal_key"])) == 16 and len(reg["kcv"]) == 6
    from cardcrypto.profile import key_check_value

    assert key_check_value(bytes.fromhex(reg["terminal_key"])) == reg["kcv"]
    for payload, code in [
        ({"kind": "pos"}, "FACILITY_REQUIRED"),
        ({"kind": "counter", "fixmedins_code": facility["fixmedins_code"]}, "FACILITY_NOT_ALLOWED"),
        ({"kind": "pos", "fixmedins_code": "NOPE2"}, "FACILITY_NOT_FOUND"),
        ({"kind": "teller"}, "VALIDATION_FAILED"),
    ]:
        status, body = await service.admin("POST", "/v1/terminals", payload)
        assert body["error"]["code"] == code, (payload, body)
        assert status in (400, 404)
    conn = await asyncpg.connect(service.database_url)
    try:
        stored = await conn.fetchval(
            "SELECT key_under_lmk FROM terminals WHERE terminal_id = $1", reg["terminal_id"]
        )
    finally:
        await conn.close()
    assert bytes.fromhex(reg["terminal_key"]) not in bytes(stored)


async def test_catalog_bulk_upsert(service: Service):
    code = unique_code("B-")
    items = {
        "items": [
            {
                "code": code,
                "name": "头孢",
                "chrgitm_lv": "B",
                "selfpay_prop": 10,
                "max_price": 2000,
            },
            {"code": code + "W", "name": "缝合", "chrgitm_lv": "A", "work_injury": True},
        ]
    }
    assert await service.admin_ok("PUT", "/v1/catalog/items", items) == {"upserted": 2}
    items["items"][0]["max_price"] = 2500
    assert await service.admin_ok("PUT", "/v1/catalog/items", items) == {"upserted": 2}
    conn = await asyncpg.connect(service.database_url)
    try:
        assert (
            await conn.fetchval("SELECT max_price FROM catalog_items WHERE code = $1", code) == 2500
        )
    finally:
        await conn.close()
    status, body = await service.admin(
        "PUT", "/v1/catalog/items", {"items": [items["items"][0], items["items"][0]]}
    )
    assert status == 400 and body["error"]["code"] == "DUPLICATE_ITEM"
    status, body = await service.admin(
        "PUT", "/v1/catalog/items", {"items": [{"code": "X", "name": "x", "chrgitm_lv": "D"}]}
    )
    assert status == 400 and body["error"]["code"] == "VALIDATION_FAILED"


async def test_injury_cases(service: Service):
    person = await service.person(insutypes=("410",))
    case = await service.admin_ok(
        "POST",
        "/v1/injury-cases",
        {
            "psn_no": person["psn_no"],
            "employer": "无锡某厂",
            "injury_date": "2026-01-05",
            "valid_from": "2026-01-05",
            "valid_to": "2026-12-31",
        },
    )
    assert case["status"] == "approved" and case["case_id"].startswith("IC")
    status, body = await service.admin(
        "POST",
        "/v1/injury-cases",
        {
            "psn_no": person["psn_no"],
            "employer": "x",
            "injury_date": "2026-01-05",
            "valid_from": "2026-02-01",
            "valid_to": "2026-01-31",
        },
    )
    assert status == 400 and body["error"]["code"] == "INVALID_DATES"
