"""schema/openapi.yaml describes exactly the routes the application serves."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from openapi_spec_validator import validate

from cardsvc.app import create_app

ROOT = Path(__file__).resolve().parents[1]


def _openapi_operations() -> set[tuple[str, str]]:
    spec = yaml.safe_load((ROOT / "schema" / "openapi.yaml").read_text())
    return {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }


def _app_operations(settings) -> set[tuple[str, str]]:
    app = create_app(settings)
    ops = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        path = route.resource.canonical
        pattern = route.resource.get_info().get("pattern")
        match = re.search(r"\(\?P<(\w+)>([\w|-]+)\)", pattern.pattern) if pattern else None
        if match:  # one alternation route stands for several documented paths
            for alt in match.group(2).split("|"):
                ops.add((route.method, path.replace("{" + match.group(1) + "}", alt)))
        else:
            ops.add((route.method, path))
    return ops


def test_openapi_document_is_valid():
    validate(yaml.safe_load((ROOT / "schema" / "openapi.yaml").read_text()))


def test_openapi_documents_exactly_the_routes(settings):
    assert _app_operations(settings) == _openapi_operations()
