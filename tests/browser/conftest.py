"""Browser tests: Debian's chromium, driven by Playwright, against the test session's real
service (tests/conftest.py). Playwright's own browser builds are never used (nor
downloaded): a machine without /usr/bin/chromium fails these tests, it does not skip them.

Operators are written into the database as ``python -m cardsvc create-operator`` writes
them (tests/support/operators.py); each signs in through the login page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from tests.support.api import Service
from tests.support.operators import create_operator

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
TABLET = {"width": 768, "height": 1024}
ROLES = ("administrator", "clerk", "reviewer", "auditor")


@dataclass
class Operator:
    operator_id: str
    login: str
    password: str
    roles: tuple[str, ...]


class OperatorApi:
    """An operator's console session outside the browser (cookie + CSRF token), for setting
    up and checking what the browser did."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def login(self, login: str, password: str) -> None:
        body = await self.ok(
            "POST", "/v1/operator-sessions", {"login": login, "password": password}
        )
        self.csrf = body["csrf_token"]

    async def call(self, method: str, path: str, json: Any = None) -> tuple[int, Any, Any]:
        headers = {"X-CSRF-Token": self.csrf} if self.csrf and method != "GET" else {}
        async with self.http.request(method, self.base_url + path, json=json, headers=headers) as r:
            raw = await r.read()
            body = None
            if raw and r.content_type == "application/json":
                body = await r.json()
            return r.status, body, r.headers

    async def ok(self, method: str, path: str, json: Any = None) -> Any:
        status, body, _ = await self.call(method, path, json)
        assert status < 300, (method, path, status, body)
        return body

    async def close(self) -> None:
        await self.http.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def operators(service: Service) -> dict[str, Operator]:
    """One operator per role, and one holding all four ("all")."""
    made = {}
    for role in ROLES:
        op = await create_operator(service.database_url, (role,), name=f"测试{role}")
        made[role] = Operator(op.operator_id, op.login, op.password, op.roles)
    op = await create_operator(service.database_url, ROLES, name="测试全部")
    made["all"] = Operator(op.operator_id, op.login, op.password, op.roles)
    return made


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def as_admin(service: Service, operators: dict[str, Operator]) -> AsyncIterator[OperatorApi]:
    api = OperatorApi(service.base_url)
    await api.login(operators["administrator"].login, operators["administrator"].password)
    yield api
    await api.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM.exists(), "the browser tests need Debian's chromium: apt-get install chromium"
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


class Console:
    """One browser context (its own cookies and storage) on the console."""

    def __init__(self, context: BrowserContext, page: Page, base_url: str) -> None:
        self.context, self.page, self.base_url = context, page, base_url
        self.csp_violations: list[str] = []
        self.script_errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.script_errors.append(str(error)))

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:
            self.csp_violations.append(message.text)

    async def open(self, path: str = "/console/") -> None:
        await self.page.goto(self.base_url + path)
        await self.page.wait_for_selector("body[data-ready='1']")

    async def login(self, operator: Operator) -> None:
        await self.open()
        await self.page.fill("[data-testid=login]", operator.login)
        await self.page.fill("[data-testid=password]", operator.password)
        await self.page.click("[data-testid=login-submit]")
        await self.page.wait_for_selector("[data-testid=operator-name]")

    async def go(self, hash_path: str) -> None:
        await self.page.evaluate("h => { location.hash = h; }", hash_path)

    async def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        size = self.page.viewport_size or DESKTOP
        await self.page.screenshot(
            path=str(SCREENSHOTS / f"{name}-{size['width']}x{size['height']}.png"), full_page=True
        )


@pytest_asyncio.fixture(loop_scope="session")
async def console(browser: Browser, service: Service) -> AsyncIterator[Console]:
    context = await browser.new_context(viewport=DESKTOP, locale="zh-CN", accept_downloads=True)
    page = await context.new_page()
    page.set_default_timeout(15_000)
    tab = Console(context, page, service.base_url)
    yield tab
    await context.close()
    assert not tab.csp_violations, tab.csp_violations
    assert not tab.script_errors, tab.script_errors
