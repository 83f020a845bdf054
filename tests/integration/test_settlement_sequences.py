"""Seeded random sequences of settlements, reversals and credits for one person, through the
real HTTP API (signed terminals, PostgreSQL, hsm_stub), each step checked field by field against
the independent reading of docs/policy.md in ``tests/unit/settlement/reference.py``. The year state
of the reference is tracked here; the service keeps its own in the database."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio

from cardsvc.terminal_sdk.client import TerminalClient
from tests.support.api import (
    POLICY_CATALOG,
    Patient,
    Service,
    authenticate_card,
    credit,
    lines,
    patient,
)
from tests.unit.settlement import reference as ref

pytestmark = pytest.mark.asyncio(loop_scope="session")

STEP3 = (*ref.STEP3_FIELDS, "review_required")

# The reference catalog's own items (docs/policy.md's five are POLICY_CATALOG).
EXTRA_CATALOG = [
    {"code": code, "name": f"参考项目{code}", **item}
    for code, item in ref.CATALOG.items()
    if code.startswith("REF-")
]

ALL = ("310", "390", "410", "510")
FACILITIES: dict[str, dict[str, Any]] = {
    "community": {"type": "hospital", "level": "community", "agreements": ALL},
    "1": {"type": "hospital", "level": "1", "agreements": ALL},
    "2": {"type": "hospital", "level": "2", "agreements": ALL},
    "3": {"type": "hospital", "level": "3", "agreements": ALL},
    "3-C": {"type": "hospital", "level": "3", "agreements": ALL, "credit_rating": "C"},
    "1-no390": {"type": "hospital", "level": "1", "agreements": ("310", "410", "510")},
    "pharmacy": {"type": "pharmacy", "level": None, "agreements": ("310", "410")},
}
HOSPITALS = ["community", "1", "2", "3", "3-C", "1-no390"]
CODES = [code for code in ref.CATALOG for _ in range(3 if code.startswith("REF-") else 5)]
FITTING = {"310": ["11", "21", "41"], "390": ["11", "21"], "410": ["11", "21", "41"]}
FITTING["510"] = ["51", "52"]


def today() -> dt.date:
    return dt.datetime.now(ZoneInfo("Asia/Shanghai")).date()


@dataclass
class World:
    service: Service
    counter: TerminalClient
    pos: dict[str, TerminalClient]
    facilities: dict[str, dict[str, Any]]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(service: Service) -> World:
    await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG + EXTRA_CATALOG})
    pos, facilities = {}, {}
    for key, spec in FACILITIES.items():
        created = await service.facility(
            type=spec["type"],
            level=spec["level"],
            agreements=list(spec["agreements"]),
            credit_rating=spec.get("credit_rating", "A"),
        )
        pos[key] = await service.terminal("pos", created["fixmedins_code"])
        facilities[key] = {
            "type": spec["type"],
            "level": spec["level"],
            "credit_rating": spec.get("credit_rating", "A"),
            "status": "active",
            "agreements": spec["agreements"],
        }
    return World(service, await service.terminal("counter"), pos, facilities)


@dataclass
class Sequence:
    """One person's settlements through the API, with the reference's state alongside."""

    world: World
    first: Patient
    person: dict[str, Any]
    state: dict[str, int]
    at: dict[str, Patient] = field(default_factory=dict)
    done: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    async def patient_at(self, key: str) -> Patient:
        if key not in self.at:
            terminal = self.world.pos[key]
            auth = await authenticate_card(terminal, self.first.card, "transaction")
            self.at[key] = Patient(self.first.person, self.first.card, terminal, auth["card_token"])
        return self.at[key]

    async def check_balance(self) -> None:
        person = await self.world.service.admin_ok("GET", f"/v1/persons/{self.first.psn_no}")
        assert person["balc"] == self.state["balance"], self.log

    async def settle(self, key: str, request: dict[str, Any]) -> None:
        self.log.append(f"settle at {key}: {request} state={self.state}")
        try:
            expected: dict[str, Any] | str = ref.reference_settle(
                self.state, self.person, self.world.facilities[key], request
            )
        except ref.RefError as exc:
            expected = exc.code
        extra = {
            k: request[k]
            for k in ("acct_used_flag", "injury_case_id", "delivery_type")
            if request.get(k) is not None
        }
        p = await self.patient_at(key)
        resp = await p.request(
            "/v1/settlements",
            request["insutype"],
            request["med_type"],
            lines(*request["lines"]),
            **extra,
        )
        if isinstance(expected, str):
            assert resp.status in (403, 422), (resp.status, resp.body, expected, self.log)
            assert resp.body["error"]["code"] == expected, (resp.body, self.log)
            return
        assert resp.status == 200, (resp.body, expected, self.log)
        got = {k: resp.body[k] for k in STEP3}
        want = {k: expected[k] for k in STEP3}
        assert got == want, ({k: (got[k], want[k]) for k in STEP3 if got[k] != want[k]}, self.log)
        self.state = expected["state_after"]
        self.done.append((key, resp.body["setl_id"], expected))
        await self.check_balance()

    async def reverse(self, pick: int) -> None:
        if not self.done:
            return
        key, setl_id, expected = self.done.pop(pick % len(self.done))
        self.log.append(f"reverse {setl_id} at {key}: {expected}")
        reversal = await self.world.pos[key].call("POST", f"/v1/settlements/{setl_id}/reverse")
        self.state = ref.reference_reverse(self.state, expected)
        assert reversal["acct_refund"] == expected["acct_pay"], (reversal, self.log)
        assert reversal["fund_refund"] == expected["fund_pay_sumamt"], (reversal, self.log)
        assert reversal["balc"] == self.state["balance"], (reversal, self.log)
        await self.check_balance()

    async def credit(self, amount: int) -> None:
        self.log.append(f"credit {amount}")
        await credit(self.world.service, self.first.psn_no, amount)
        self.state["balance"] += amount
        await self.check_balance()


def random_price(rng: random.Random) -> int:
    kind = rng.randrange(10)
    if kind < 4:
        return rng.randint(0, 5_000)
    if kind < 7:
        return rng.randint(0, 200_000)
    if kind < 9:
        return rng.randint(200_000, 30_000_000)
    return rng.choice([0, 1, 1999, 2000, 2001, 4999, 5000, 5001, 33333, 33334, 80000, 80001])


def random_request(
    rng: random.Random, schemes: tuple[str, ...], cases: list[str | None]
) -> tuple[str, dict[str, Any]]:
    insutype = rng.choice(schemes) if rng.random() < 0.9 else rng.choice(ALL)
    fitting = FITTING[insutype]
    med_type = rng.choice(fitting) if rng.random() < 0.9 else rng.choice(["11", "21", "41", "52"])
    if med_type == "41":
        key = "pharmacy" if rng.random() < 0.9 else rng.choice(HOSPITALS)
    else:
        key = rng.choice(HOSPITALS) if rng.random() < 0.9 else "pharmacy"
    fee = [
        (
            rng.choice(CODES) if rng.random() < 0.97 else "X-NOPE",
            random_price(rng),
            rng.randint(1, 3),
        )
        for _ in range(rng.randint(1, 3))
    ]
    request: dict[str, Any] = {
        "insutype": insutype,
        "med_type": med_type,
        "date": today(),
        "lines": fee,
        "acct_used_flag": rng.random() < 0.8,
    }
    if insutype == "410":
        request["injury_case_id"] = rng.choice(cases)
    if med_type == "52" and rng.random() < 0.9:
        request["delivery_type"] = rng.choice(["normal", "cesarean"])
    return key, request


@pytest.mark.parametrize(
    ("seed", "psn_type"), [(2026, "in_service"), (31, "retired"), (510, "resident")]
)
async def test_random_sequence_matches_the_reference(world: World, seed: int, psn_type: str):
    rng = random.Random(seed)
    schemes = ("390",) if psn_type == "resident" else ("310", "410", "510")
    balance = rng.choice([0, 8_000, 300_000])
    first_at = rng.choice(HOSPITALS)
    p = await patient(
        world.service,
        world.pos[first_at],
        world.counter,
        psn_type=psn_type,
        insutypes=schemes,
        balance=balance,
    )
    cases: dict[str, dict[str, Any]] = {}
    if "410" in schemes:
        for frm, to in ((-30, 30), (-60, -1)):  # a current case and one that has ended
            created = await world.service.admin_ok(
                "POST",
                "/v1/injury-cases",
                {
                    "psn_no": p.psn_no,
                    "employer": "无锡某厂",
                    "injury_date": (today() + dt.timedelta(days=-90)).isoformat(),
                    "valid_from": (today() + dt.timedelta(days=frm)).isoformat(),
                    "valid_to": (today() + dt.timedelta(days=to)).isoformat(),
                },
            )
            cases[created["case_id"]] = {
                "psn_no": p.psn_no,
                "status": created["status"],
                "valid_from": dt.date.fromisoformat(created["valid_from"]),
                "valid_to": dt.date.fromisoformat(created["valid_to"]),
            }
    current = next(iter(cases), None)
    case_choices = [current, current, current, *cases, None]
    person = {
        "psn_no": p.psn_no,
        "psn_type": psn_type,
        "card_status": "active",
        "enrolments": [
            {"insutype": s, "begndate": dt.date(2020, 1, 1), "enddate": None} for s in schemes
        ],
        "injury_cases": cases,
    }
    seq = Sequence(world, p, person, ref.new_state(balance), at={first_at: p})
    await seq.check_balance()
    for _ in range(8):
        roll = rng.random()
        if roll < 0.12:
            await seq.reverse(rng.randrange(1000))
        elif roll < 0.2:
            await seq.credit(rng.randint(1, 200_000))
        else:
            await seq.settle(*random_request(rng, schemes, case_choices))
    assert seq.done, seq.log  # at least one settlement went through
