"""Package boundaries, read off the import statements (the AST of every module, imports inside
functions included, relative imports resolved), so a newcomer can trust the layout:

- the service (``cardsvc`` without its tools ``terminal_sdk``, ``vcard`` and ``devenv``)
  imports neither its tools nor ``hsm_stub`` nor ``loadtest``;
- ``hsm_stub`` (the HSM end of the link) imports nothing of ``cardsvc`` (the client end); both
  speak the link through ``hsmlink`` and compute through ``cardcrypto``, which import neither;
- the terminal SDK is a client of the service's HTTP API: of the service it imports only
  ``SDK_MAY_IMPORT``, pure modules that define what both sides must agree on byte for byte
  (the card records the service issues and the SDK writes, how an identity number is masked,
  the log format), and those import nothing else of the service, nor aiohttp or asyncpg;
  nothing of the HSM;
- the independent interop terminal (``tests/interop``) imports nothing of this repository's
  code at all: it is written from the protocol description;
- the HIS client (``tests/his/client.py``) likewise, from the national gateway's contract;
  its tests set up persons, cards and terminals with the service's tools, never through
  the gateway's own code.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TOOLS = ("cardsvc.terminal_sdk", "cardsvc.vcard", "cardsvc.devenv")
OUR_CODE = ("cardsvc", "hsm_stub", "hsmlink", "cardcrypto", "loadtest")
SDK_MAY_IMPORT = (
    "cardsvc.cards.records",
    "cardsvc.persons.certno",
    "cardsvc.logging",
    "cardsvc.clock",  # the business time zone, to show times as people read them
    "cardsvc.money",  # fen and yuan, as people read and type them
)


@dataclass(frozen=True)
class Rule:
    name: str
    packages: tuple[str, ...]  # the modules the rule is about (and their submodules)
    forbidden: tuple[str, ...]  # what none of them may import (and its submodules)
    exempt: tuple[str, ...] = ()  # submodules of ``packages`` the rule is not about
    allowed: tuple[str, ...] = ()  # exceptions to ``forbidden``


RULES = (
    Rule(
        "the service imports neither its tools, nor hsm_stub, nor loadtest",
        packages=("cardsvc",),
        exempt=TOOLS,
        forbidden=(*TOOLS, "hsm_stub", "loadtest"),
    ),
    Rule("hsm_stub imports nothing of cardsvc", ("hsm_stub",), ("cardsvc", "loadtest")),
    Rule(
        "the HSM link imports neither end",
        ("hsmlink",),
        ("cardsvc", "hsm_stub", "loadtest"),
    ),
    Rule(
        "the crypto profile imports none of its users",
        ("cardcrypto",),
        ("cardsvc", "hsm_stub", "hsmlink", "loadtest"),
    ),
    Rule(
        "the terminal SDK imports of the service only its shared pure modules",
        packages=("cardsvc.terminal_sdk",),
        forbidden=("cardsvc", "hsm_stub", "hsmlink", "loadtest"),
        allowed=("cardsvc.terminal_sdk", *SDK_MAY_IMPORT),
    ),
    Rule(
        "what the SDK may import of the service is pure and self-contained",
        packages=SDK_MAY_IMPORT,
        forbidden=("cardsvc", "hsm_stub", "hsmlink", "loadtest", "aiohttp", "asyncpg"),
    ),
    Rule(
        "the tools run hsm_stub, they do not import it",
        ("cardsvc.vcard", "cardsvc.devenv"),
        ("hsm_stub", "loadtest"),
    ),
    Rule("the load harness runs hsm_stub, it does not import it", ("loadtest",), ("hsm_stub",)),
    Rule(
        "the interop terminal is independent of this repository's code",
        ("tests.interop",),
        (*OUR_CODE, "tests.support", "tests.his"),
    ),
    Rule(
        "the HIS client is written from the national gateway's contract alone",
        ("tests.his.client",),
        (*OUR_CODE, "tests.support", "tests.interop"),
    ),
    Rule(
        "the HIS tests set up the city with the service's own tools, never the gateway's code",
        ("tests.his",),
        ("cardsvc.national", "tests.support.gateway"),
    ),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, as absolute dotted names, with its line."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # ``from cardsvc import terminal_sdk`` imports the submodule.
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def _modules(rule: Rule) -> list[Path]:
    paths: list[Path] = []
    for package in rule.packages:
        base = ROOT / package.replace(".", "/")
        module = base.with_suffix(".py")
        paths += [module] if module.is_file() else sorted(base.rglob("*.py"))
    return [p for p in paths if not _within(_module_name(p), rule.exempt)]


def violations(rule: Rule) -> list[str]:
    found = []
    for path in _modules(rule):
        for line, target in sorted(imports_of(path)):
            if _within(target, rule.forbidden) and not _within(target, rule.allowed):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return found


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_boundary(rule: Rule):
    assert _modules(rule), f"no modules found for {rule.packages}"
    assert violations(rule) == [], rule.name


def test_the_checker_sees_relative_and_nested_imports(tmp_path, monkeypatch):
    package = tmp_path / "cardsvc" / "area"
    package.mkdir(parents=True)
    (tmp_path / "cardsvc" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "views.py").write_text(
        "from ..terminal_sdk import client\n"
        "def f():\n"
        "    import hsm_stub.keystore\n"
        "from cardsvc import devenv\n"
        "from . import models\n"
    )
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert violations(RULES[0]) == [
        "cardsvc/area/views.py:1 imports cardsvc.terminal_sdk",
        "cardsvc/area/views.py:1 imports cardsvc.terminal_sdk.client",
        "cardsvc/area/views.py:3 imports hsm_stub.keystore",
        "cardsvc/area/views.py:4 imports cardsvc.devenv",
    ]
