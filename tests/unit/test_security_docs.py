"""docs/security.md's role × route table is the declarations on the handlers: a route
whose roles change, or a new operator route, fails here until the table says so."""

from __future__ import annotations

import re
from pathlib import Path

from cardsvc.app import create_app
from cardsvc.config import Settings
from cardsvc.operators.models import ROLES
from cardsvc.web.auth import declared_access

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
_ROW = re.compile(r"^\| `(?P<method>[A-Z]+) (?P<path>[^`]+)` \|(?P<cells>.*)\|$")


def _documented() -> dict[tuple[str, str], tuple[frozenset[str], frozenset[str]]]:
    text = DOC.read_text()
    table = text[text.index("Who may call each operator route") :]
    table = table[: table.index("\n\n", table.index("| route |"))]
    rows = {}
    for line in table.splitlines():
        match = _ROW.match(line)
        if match is None:
            continue
        cells = [c.strip() for c in match["cells"].replace("\\|", "/").split("|")]
        if "own console session" in cells[0]:
            rows[(match["method"], match["path"])] = (frozenset({"session"}), frozenset())
            continue
        roles = frozenset(role for role, cell in zip(ROLES, cells[:4], strict=True) if cell)
        kinds = frozenset(k.strip() for k in cells[4].split(",") if k.strip())
        rows[(match["method"], match["path"].replace("\\|", "|"))] = (roles, kinds)
    return rows


def _declared() -> dict[tuple[str, str], tuple[frozenset[str], frozenset[str]]]:
    app = create_app(Settings(admin_token="a" * 16, data_key=b"\0" * 32))
    rows = {}
    for route in app.router.routes():
        access = declared_access(route.handler) or frozenset()
        roles = frozenset(a[3:] for a in access if a.startswith("op:"))
        if route.method == "HEAD" or not roles:
            continue
        path = route.resource.canonical.replace("{decision}", "{approve|reject}")
        kinds = frozenset(a for a in access if not a.startswith("op:"))
        rows[(route.method, path)] = (roles, kinds)
    return rows


def test_the_role_table_is_the_declarations():
    assert _documented() == _declared()
