"""Policy facts live only in the policy file: the codes of schemes, person types and ratings
appear in the service's code only as the wire vocabulary (``Literal`` types), and the loader
refuses a file that does not cover exactly that vocabulary."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cardsvc.settlement.params import PolicyParams
from tests.unit.settlement import PARAMS

ROOT = Path(__file__).resolve().parents[3]
# The tools around the service (demo data, the SDK, the virtual card, the generator of
# docs/policy.md, whose worked examples are persons of given types) may name codes freely.
NOT_THE_SERVICE = (
    "cardsvc/terminal_sdk",
    "cardsvc/devenv",
    "cardsvc/vcard",
    "cardsvc/settlement/policydoc.py",
)
POLICY_CODES = {"310", "390", "410", "510", "in_service", "retired", "resident"}
RATINGS = {"A", "B", "C", "D"}


def _literal_subscripts(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``Literal[...]``: the wire vocabulary, allowed."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("Literal"):
            inside |= {id(n) for n in ast.walk(node.slice)}
    return inside


def policy_literals(source: str) -> list[tuple[int, str]]:
    """Where ``source`` spells a scheme code or person type, or compares a rating, itself."""
    tree = ast.parse(source)
    allowed = _literal_subscripts(tree)
    found = [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in POLICY_CODES and id(node) not in allowed
    ]
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and "rating" in ast.unparse(node):
            operands = [node.left, *node.comparators]
            found += [
                (node.lineno, operand.value)
                for operand in operands
                if isinstance(operand, ast.Constant) and operand.value in RATINGS
            ]
    return sorted(found)


def _service_modules() -> list[Path]:
    return [
        path
        for path in sorted((ROOT / "cardsvc").rglob("*.py"))
        if not str(path.relative_to(ROOT)).startswith(NOT_THE_SERVICE)
    ]


def test_no_policy_fact_is_spelled_in_the_service() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} {value!r}"
        for path in _service_modules()
        for line, value in policy_literals(path.read_text())
    ]
    assert found == [], "read these from the policy file (cardsvc.settlement.params)"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('if insutype == "310": pass', [(1, "310")]),
        ('TYPES = {"390": {"resident"}}', [(1, "390"), (1, "resident")]),
        ('ok = row["credit_rating"] == "D"', [(1, "D")]),
        ('ok = "D" != facility.credit_rating', [(1, "D")]),
        ('Insutype = Literal["310", "390"]', []),
        ('x: Literal["in_service"] | None = None', []),
        ('side = "D" if debit else "C"', []),  # a ledger side, not a rating
        ('"""Only 310 has an account."""', []),
    ],
)
def test_the_scan_finds_spelled_facts(source: str, expected: list[tuple[int, str]]) -> None:
    assert policy_literals(source) == expected


def _edit(change: Callable[[dict[str, Any]], None]) -> bytes:
    raw = msgspec.json.decode(msgspec.json.encode(PARAMS))
    change(raw)
    return msgspec.json.encode(raw)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            raw = raw[key]
        raw[last] = value

    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            raw = raw[key]
        del raw[last]

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_drop("person_types.510"), "person_types must name exactly"),
        (_set("person_types.320", ["resident"]), "person_types must name exactly"),
        (_set("person_types.390", ["student"]), r"person_types\[390\] must be among"),
        (_drop("scheme_rules.390"), "scheme_rules must name exactly"),
        (_set("scheme_rules.390", "pension"), "Invalid enum value 'pension'"),
        (_set("account_insutypes", ["310", "320"]), "account_insutypes must be among"),
        (_drop("fund_pay_types.410"), "fund_pay_types must name exactly"),
        (_set("facility_ratings.suspended", ["E"]), "facility_ratings must be among"),
        (_set("work_injury_insutypes", ["510"]), "work_injury_insutypes must be the schemes"),
    ],
)
def test_the_loader_refuses_facts_that_miss_the_vocabulary(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.json.decode(_edit(change), type=PolicyParams)


def test_the_policy_file_holds_the_facts_the_code_used_to_spell() -> None:
    assert PARAMS.person_types["390"] == {"resident"}
    assert PARAMS.person_types["310"] == {"in_service", "retired"}
    assert PARAMS.account_insutypes == {"310"}
    assert PARAMS.facility_ratings.suspended == {"D"}
    assert PARAMS.scheme_rules == {
        "310": "employee_medical",
        "390": "resident_medical",
        "410": "work_injury",
        "510": "maternity",
    }
    assert PARAMS.insutypes_under("resident_medical") == {"390"}
