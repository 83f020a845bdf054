"""What the load asks for, pure: which terminal a card visits and the settlement bodies.

Every request is one the service must accept: the person's scheme, the facility's type and
agreements and the med_type always fit docs/policy.md's table, 410 names the person's approved
injury case, and a 52 delivery is only asked once per person and year.

``settle`` and ``visit`` use one clinical shape per card (a pharmacy purchase or an
outpatient visit for employees, an outpatient visit for residents); ``mix`` draws an
operation per arrival with the weights of ``MIX``.
"""

from __future__ import annotations

import random
from typing import Any

from loadtest import population
from loadtest.city import Item
from loadtest.state import Facility, Terminal, WorkCard

# Share of each operation in the realistic mix (sums to 1).
MIX: dict[str, float] = {
    "pharmacy": 0.42,
    "outpatient": 0.32,
    "inpatient": 0.07,
    "work_injury": 0.06,
    "maternity": 0.05,
    "reversal": 0.02,
    "reconciliation": 0.06,
}
SETTLING_KINDS = ("pos", "his")


class Catalog:
    def __init__(self, items: list[Item]) -> None:
        self.drugs = [i for i in items if i.drug and not i.work_injury]
        self.services = [i for i in items if not i.drug and not i.work_injury]
        self.injury = [i for i in items if i.work_injury]

    @staticmethod
    def line(rng: random.Random, item: Item, most: int = 3) -> dict[str, Any]:
        price = max(1, item.price * rng.randint(80, 120) // 100)
        return {"code": item.code, "unit_price": price, "quantity": rng.randint(1, most)}


class Places:
    """The terminals the load may use, grouped by what their facility can settle."""

    def __init__(self, terminals: list[Terminal], facilities: list[Facility]) -> None:
        by_code = {f.fixmedins_code: f for f in facilities}
        self.terminals = [
            t for t in terminals if t.kind in SETTLING_KINDS and t.fixmedins_code in by_code
        ]
        self.facility = {t.terminal_id: by_code[str(t.fixmedins_code)] for t in self.terminals}

    def where(self, facility_type: str, insutype: str, levels: tuple[str, ...] = ()) -> list[int]:
        """Indices of terminals at facilities of this type holding this agreement."""
        return [
            n
            for n, t in enumerate(self.terminals)
            if (f := self.facility[t.terminal_id]).type == facility_type
            and insutype in f.agreements
            and (not levels or f.level in levels)
        ]


def home_terminal(card: WorkCard, places: Places) -> tuple[int, str]:
    """The terminal a card settles at in ``settle``/``visit``, and the operation there."""
    h = population.mix(int(card.card_no[1:]))
    if "310" in card.insutypes and h % 10 < 6:
        choices, op = places.where("pharmacy", "310"), "pharmacy"
    else:
        insutype = "310" if "310" in card.insutypes else "390"
        choices, op = places.where("hospital", insutype), "outpatient"
    if not choices:
        raise ValueError("the city has no facility for this card's scheme")
    return choices[(h >> 16) % len(choices)], op


def settlement(
    op: str,
    card: WorkCard,
    facility: Facility,
    catalog: Catalog,
    rng: random.Random,
    mdtrt_id: str,
    *,
    deliver: bool = False,
) -> dict[str, Any]:
    """The ``POST /v1/settlements`` body (without the card token) for one operation."""
    employee = "310" in card.insutypes
    body: dict[str, Any] = {"mdtrt_id": mdtrt_id}
    pick = rng.choice
    if op == "pharmacy":
        lines = [catalog.line(rng, pick(catalog.drugs)) for _ in range(rng.randint(1, 4))]
        body.update(insutype="310", med_type="41", feedetail=lines)
    elif op == "outpatient":
        lines = [catalog.line(rng, pick(catalog.services), 1)]
        lines += [catalog.line(rng, pick(catalog.drugs)) for _ in range(rng.randint(0, 3))]
        body.update(insutype="310" if employee else "390", med_type="11", feedetail=lines)
    elif op == "inpatient":
        lines = [catalog.line(rng, pick(catalog.services), 10) for _ in range(rng.randint(2, 5))]
        lines += [catalog.line(rng, pick(catalog.drugs), 10) for _ in range(rng.randint(1, 4))]
        body.update(insutype="310" if employee else "390", med_type="21", feedetail=lines)
    elif op == "work_injury":
        med_type = "41" if facility.type == "pharmacy" else rng.choice(("11", "21"))
        pool = catalog.drugs if med_type == "41" else catalog.injury
        lines = [catalog.line(rng, pick(pool)) for _ in range(rng.randint(1, 3))]
        lines.append(catalog.line(rng, pick(catalog.drugs)))
        body.update(
            insutype="410",
            med_type=med_type,
            feedetail=lines,
            injury_case_id=card.injury_case_id,
        )
    elif op == "maternity":
        lines = [catalog.line(rng, pick(catalog.services), 2) for _ in range(rng.randint(1, 3))]
        body.update(insutype="510", med_type="51", feedetail=lines)
        if deliver:
            body.update(med_type="52", delivery_type=rng.choice(("normal", "cesarean")))
    else:
        raise ValueError(f"not a settlement operation: {op}")
    return body


def choose_op(rng: random.Random) -> str:
    return rng.choices(list(MIX), weights=list(MIX.values()))[0]


class MixPools:
    """The cards and terminals each mix operation can use."""

    def __init__(self, cards: list[WorkCard], places: Places) -> None:
        self.places = places
        self.cards = {
            "pharmacy": [c for c in cards if "310" in c.insutypes],
            "outpatient": cards,
            "inpatient": cards,
            "work_injury": [c for c in cards if c.injury_case_id],
            "maternity": [c for c in cards if "510" in c.insutypes and c.gend == "2"],
        }
        hospital_employee = places.where("hospital", "310")
        self.terminals = {
            "pharmacy": places.where("pharmacy", "310"),
            "outpatient_310": hospital_employee,
            "outpatient_390": places.where("hospital", "390"),
            "work_injury": places.where("hospital", "410") + places.where("pharmacy", "410"),
            "maternity": places.where("hospital", "510"),
        }

    def terminal_for(self, op: str, card: WorkCard) -> list[int]:
        if op in ("outpatient", "inpatient"):
            return self.terminals["outpatient_310" if "310" in card.insutypes else "outpatient_390"]
        return self.terminals[op]

    def usable(self, op: str) -> bool:
        return bool(self.cards.get(op)) and all(
            self.terminal_for(op, c) for c in self.cards[op][:1]
        )
