"""The console's and the public page's files: served by cardsvc from a fixed list, under a
strict Content-Security-Policy, never from a path the request names."""

from __future__ import annotations

import json
import re

import pytest

from cardsvc.console import assets
from tests.support.api import Service

session_loop = pytest.mark.asyncio(loop_scope="session")


async def _get(service: Service, path: str) -> tuple[int, bytes, dict[str, str]]:
    async with service.http.get(service.base_url + path) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


@session_loop
@pytest.mark.parametrize("path", ["/console/", "/public/"])
async def test_the_pages_are_served_with_strict_headers(service: Service, path: str):
    status, body, headers = await _get(service, path)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "style-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    page = body.decode()
    # No inline script or style: everything the page loads is a file of the service.
    assert "<style" not in page and " style=" not in page
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)
    for ref in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert ref.startswith("/console/static/"), ref
        status, content, _ = await _get(service, ref)
        assert status == 200 and content, ref


@session_loop
async def test_every_module_the_scripts_import_is_served(service: Service):
    for name in assets.names():
        if not name.endswith(".js") or name == assets.ECHARTS_NAME:
            continue
        status, body, headers = await _get(service, f"/console/static/{name}")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript"), name
        for imported in re.findall(r'from "\./([^"]+)"', body.decode()):
            assert imported in assets.names(), (name, imported)


@session_loop
async def test_the_chart_library_comes_from_the_service(service: Service):
    assert assets.echarts_available(), "run scripts/setup.sh (npm ci installs echarts)"
    status, body, headers = await _get(service, "/console/static/echarts.min.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert b"echarts" in body[:2000] and len(body) > 500_000


@session_loop
@pytest.mark.parametrize(
    "path",
    [
        "/console/static/..%2F..%2Fconfig.py",
        "/console/static/%2e%2e%2fassets.py",
        "/console/static/assets.py",
        "/console/static/index.html.map",
        "/console/static/node_modules",
        "/console/static/.npmrc",
    ],
)
async def test_no_other_file_is_reachable(service: Service, path: str):
    status, body, _ = await _get(service, path)
    assert status == 404 and json.loads(body)["error"]["code"] == "NOT_FOUND"


def test_both_languages_have_every_string():
    zh = json.loads((assets.STATIC / "i18n-zh.json").read_text())
    en = json.loads((assets.STATIC / "i18n-en.json").read_text())
    assert set(zh) == set(en)
    used: set[str] = set()
    prefixes = {key.split(".")[0] for key in zh}
    for script in assets.STATIC.glob("*.js"):
        for key in re.findall(r'"([a-z_]+\.[a-zA-Z0-9_-]+)"', script.read_text()):
            if key.split(".")[0] in prefixes and not key.endswith((".js", ".json", ".csv")):
                used.add(key)
    for page in assets.STATIC.glob("*.html"):
        used |= set(re.findall(r'data-i18n="([^"]+)"', page.read_text()))
    assert used - set(zh) == set()
