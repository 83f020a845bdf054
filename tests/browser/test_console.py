"""The console and the public page in a real browser (Debian's chromium), against the real
service: what each role does through the pages, checked afterwards through the API."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import secrets
from pathlib import Path

import asyncpg
import msgspec
import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser

from cardsvc import clock
from cardsvc.app import create_app
from cardsvc.config import Settings
from cardsvc.console import assets
from tests.browser.conftest import DESKTOP, TABLET, Console, Operator, OperatorApi
from tests.support.api import POLICY_CATALOG, Service, issue_card, lines, patient
from tests.support.operators import create_operator

session_loop = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def catalog(service: Service) -> None:
    await service.admin_ok("PUT", "/v1/catalog/items", {"items": POLICY_CATALOG})


async def _hospital(service: Service, **extra):
    facility = await service.facility(level="3", **extra)
    return facility["fixmedins_code"], await service.terminal("pos", facility["fixmedins_code"])


async def _dialog(console: Console, text: str) -> None:
    """The reason/note dialog: type, confirm."""
    await console.page.fill("dialog [data-testid=reason]", text)
    await console.page.click("dialog [data-testid=confirm]")


@session_loop
async def test_login_refuses_a_wrong_password_then_shows_the_clerks_menu(
    console: Console, operators: dict[str, Operator], no_address_lock
):
    clerk = operators["clerk"]
    await console.open()
    page = console.page
    await console.shot("login")
    await page.fill("[data-testid=login]", clerk.login)
    await page.fill("[data-testid=password]", clerk.password + "x")
    await page.click("[data-testid=login-submit]")
    error = page.locator("[data-testid=login-error]")
    await error.wait_for()
    assert "登录名或密码不正确" in await error.inner_text()
    await console.shot("login-failed")
    await console.login(clerk)
    menu = await page.locator("#menu a").evaluate_all("links => links.map(a => a.dataset.menu)")
    assert menu == ["persons", "facilities", "account"]
    assert await page.locator("[data-testid=operator-name]").inner_text() == "测试clerk"


@pytest_asyncio.fixture(loop_scope="session")
async def no_address_lock(service: Service):
    """Every test signs in from 127.0.0.1: leave no sign-in failures behind for the others."""
    yield
    conn = await asyncpg.connect(service.database_url)
    try:
        await conn.execute("DELETE FROM operator_login_failures")
    finally:
        await conn.close()


@session_loop
async def test_too_many_failures_show_when_to_try_again(
    console: Console, service: Service, operators: dict[str, Operator], no_address_lock
):
    """Past the free failures each one locks the login for twice as long: once the lock is
    a few seconds long, the login page says how many to wait."""
    auditor = operators["auditor"]
    api = OperatorApi(service.base_url)
    try:
        for _ in range(30):
            status, _body, headers = await api.call(
                "POST", "/v1/operator-sessions", {"login": auditor.login, "password": "wrong"}
            )
            if status == 429:
                wait = int(headers["Retry-After"])
                if wait >= 4:
                    break
                await asyncio.sleep(wait)
        assert status == 429
    finally:
        await api.close()
    await console.open()
    page = console.page
    await page.fill("[data-testid=login]", auditor.login)
    await page.fill("[data-testid=password]", auditor.password)
    await page.click("[data-testid=login-submit]")
    error = page.locator("[data-testid=login-error]")
    await error.wait_for()
    assert "尝试次数过多" in await error.inner_text() and "秒后再试" in await error.inner_text()
    await console.shot("login-throttled")


@session_loop
async def test_the_english_switch_is_remembered(console: Console):
    await console.open()
    page = console.page
    assert await page.locator("[data-testid=login-submit]").inner_text() == "登录"
    await page.click("[data-testid=lang-switch]")
    await page.locator("[data-testid=login-submit]", has_text="Log in").wait_for()
    await console.open()
    assert await page.locator("[data-testid=login-submit]").inner_text() == "Log in"
    assert await page.evaluate("document.documentElement.lang") == "en"


@session_loop
async def test_a_clerk_finds_a_person_reports_the_card_lost_and_cancels_the_loss(
    console: Console, service: Service, operators: dict[str, Operator]
):
    counter = await service.terminal("counter")
    person = await service.person()
    card = await issue_card(counter, person["psn_no"])
    await console.login(operators["clerk"])
    page = console.page
    await page.fill("[data-testid=person-q]", person["psn_no"])
    await page.click("[data-testid=person-search] button[type=submit]")
    await page.click(f"[data-testid=person-results] a[href='#/persons/{person['psn_no']}']")
    block = page.locator(f"[data-card='{card.card_no}']")
    await block.and_(page.locator("[data-status=active]")).wait_for()
    # The identity number is shown masked only.
    text = await page.locator("#view").inner_text()
    assert person["certno_full"] not in text and person["certno"] in text
    assert "柜面终端" in await page.locator("[data-testid=counter-help]").inner_text()
    await console.shot("person")

    await block.locator("[data-action=report-loss]").click()
    await page.locator(f"[data-card='{card.card_no}'][data-status=loss_reported]").wait_for()
    assert (await counter.call("GET", f"/v1/cards/{card.card_no}"))["status"] == "loss_reported"
    await page.locator(f"[data-card='{card.card_no}'] [data-action=cancel-loss]").click()
    await page.locator(f"[data-card='{card.card_no}'][data-status=active]").wait_for()
    assert (await counter.call("GET", f"/v1/cards/{card.card_no}"))["status"] == "active"
    history = await page.locator(f"[data-card='{card.card_no}'] tbody tr").count()
    assert history >= 3  # activated, loss reported, loss cancelled
    await page.set_viewport_size(TABLET)
    await console.shot("person")


@session_loop
async def test_a_reviewer_rejects_a_held_settlement_and_it_is_reversed(
    console: Console, service: Service, operators: dict[str, Operator], catalog
):
    _code, pos = await _hospital(service, credit_rating="C")
    counter = await service.terminal("counter")
    p = await patient(service, pos, counter, balance=50000)
    held = await p.settle("310", "11", lines(("A-AMOX", 1000, 1)))
    assert held["review_required"] is True
    await console.login(operators["reviewer"])
    page = console.page
    await console.go("#/reviews")
    await page.locator("[data-testid=review-results] table").wait_for()
    await console.go(f"#/reviews/{held['setl_id']}")
    await page.locator("[data-testid=reject]").wait_for()
    assert "A-AMOX" in await page.locator("#view").inner_text()  # the settlement's lines
    await console.shot("review")
    await page.click("[data-testid=reject]")
    await _dialog(console, "票据与就诊记录不符")
    done = page.locator("[data-testid=review-done]")
    await done.wait_for()
    assert "已驳回" in await done.inner_text()
    settlement = await pos.call("GET", f"/v1/settlements/{held['setl_id']}")
    assert settlement["status"] == "reversed"


@session_loop
async def test_a_reviewer_marks_a_flag_handled_with_a_note(
    console: Console, service: Service, operators: dict[str, Operator], catalog
):
    code, pos = await _hospital(service)
    counter = await service.terminal("counter")
    p = await patient(service, pos, counter, balance=1000)
    big = await p.settle("310", "21", lines(("A-AMOX", 5_000_001, 1)))
    await console.login(operators["reviewer"])
    page = console.page
    await console.go("#/flags")
    filters = page.locator("[data-testid=flag-filter]")
    await filters.locator("select[name=rule]").select_option("LARGE_CLAIM")
    await filters.locator("input[name=fixmedins_code]").fill(code)
    await filters.locator("button[type=submit]").click()
    row = page.locator("[data-testid=flag-results] tr[data-flag]", has_text=big["setl_id"])
    await row.locator("[data-testid=handle]").click()
    await _dialog(console, "已电话核实，属实")
    await filters.locator("select[name=handled]").select_option("true")
    await filters.locator("button[type=submit]").click()
    handled = page.locator("[data-testid=flag-results] tr[data-flag]", has_text=big["setl_id"])
    await handled.locator(".badge.ok").wait_for()
    assert "已电话核实，属实" in await handled.inner_text()
    await console.shot("flags")
    answer = await page.request.get(
        f"{console.base_url}/v1/supervision/flags?fixmedins_code={code}&handled=true"
    )
    flags = (await answer.json())["items"]
    mine = [f for f in flags if f["setl_id"] == big["setl_id"] and f["rule"] == "LARGE_CLAIM"]
    assert mine and mine[0]["handled_note"] == "已电话核实，属实"
    assert mine[0]["handled_by"] == operators["reviewer"].operator_id


async def _move_settlement(service: Service, setl_id: str, day: dt.date) -> None:
    """Date a settlement on another business day (as if it had been made then)."""
    conn = await asyncpg.connect(service.database_url)
    try:
        await conn.execute("UPDATE settlements SET setl_date = $2 WHERE setl_id = $1", setl_id, day)
    finally:
        await conn.close()


@session_loop
async def test_a_reviewer_changes_a_facility_rating_with_a_reason(
    console: Console, service: Service, operators: dict[str, Operator]
):
    facility = await service.facility(credit_rating="B")
    code = facility["fixmedins_code"]
    await console.login(operators["reviewer"])
    page = console.page
    await console.go(f"#/facilities/{code}")
    rating = page.locator("[data-testid=rating-form]")
    await rating.locator("select[name=credit_rating]").select_option("C")
    await rating.locator("input[name=reason]").fill("年度考核不合格")
    await rating.locator("button[type=submit]").click()
    history = page.locator("[data-testid=rating-history] tbody tr", has_text="年度考核不合格")
    await history.wait_for()
    assert "测试reviewer" in await history.inner_text()
    await console.shot("facility")
    assert (await service.admin_ok("GET", f"/v1/facilities/{code}"))["credit_rating"] == "C"


@session_loop
async def test_an_administrator_suspends_and_reinstates_a_facility(
    console: Console, service: Service, operators: dict[str, Operator]
):
    code = (await service.facility())["fixmedins_code"]
    await console.login(operators["administrator"])
    page = console.page
    await console.go(f"#/facilities/{code}")
    for expected in ("suspended", "active"):
        await page.click("[data-testid=toggle-suspension]")
        await page.click("dialog [data-testid=confirm]")
        await page.locator(f"[data-field=status]:text('{expected}')").wait_for()
        assert (await service.admin_ok("GET", f"/v1/facilities/{code}"))["status"] == expected


@session_loop
async def test_an_operator_changes_their_own_password(
    console: Console, service: Service, operators: dict[str, Operator]
):
    mine = await create_operator(service.database_url, ("auditor",), name="改密码的人")
    me = Operator(mine.operator_id, mine.login, mine.password, mine.roles)
    await console.login(me)
    page = console.page
    await console.go("#/account")
    change = page.locator("[data-testid=password-change]")
    new_password = f"Pw-{secrets.token_urlsafe(12)}-3x"
    await change.locator("input[name=current_password]").fill(me.password)
    await change.locator("input[name=new_password]").fill(new_password)
    await change.locator("button[type=submit]").click()
    await page.locator("[data-testid=password-changed]").wait_for()
    await page.click("#logout")
    await console.login(Operator(me.operator_id, me.login, new_password, me.roles))


@session_loop
async def test_an_administrator_creates_an_operator_who_can_then_log_in(
    console: Console, operators: dict[str, Operator]
):
    login = f"clerk.{secrets.token_hex(4)}"
    password = f"Ui-{secrets.token_urlsafe(12)}-7q"
    await console.login(operators["administrator"])
    page = console.page
    await console.go("#/operators")
    create = page.locator("[data-testid=operator-create]")
    await create.locator("input[name=login]").fill(login)
    await create.locator("input[name=display_name]").fill("新柜员")
    await create.locator("input[name=role_clerk]").check()
    await create.locator("input[name=password]").fill(password)
    await create.locator("button[type=submit]").click()
    await page.locator("[data-testid=operator-results] tr", has_text=login).wait_for()
    await console.shot("operators")
    await page.click("#logout")
    await page.locator("[data-testid=login]").wait_for()
    made = Operator("", login, password, ("clerk",))
    await console.login(made)
    assert await page.locator("[data-testid=operator-name]").inner_text() == "新柜员"


@session_loop
async def test_an_administrator_runs_a_clearing_and_downloads_the_file(
    console: Console, service: Service, operators: dict[str, Operator], catalog
):
    code, pos = await _hospital(service)
    counter = await service.terminal("counter")
    p = await patient(service, pos, counter, balance=5000)
    paid = await p.settle("310", "11", lines(("A-AMOX", 1000, 1)))
    # A day of its own, long past, that no other test clears.
    day = dt.date(2001, 1, 1) + dt.timedelta(days=random.randrange(0, 7000))
    await _move_settlement(service, paid["setl_id"], day)
    await console.login(operators["administrator"])
    page = console.page
    await console.go("#/clearing")
    form = page.locator("[data-testid=clearing-run]")
    await form.locator("input[name=clearing_date]").fill(day.isoformat())
    await form.locator("button[type=submit]").click()
    row = page.locator(f"tr[data-facility='{code}']")
    await row.wait_for()
    assert "¥" in await row.inner_text()
    await console.shot("clearing-run")
    async with page.expect_download() as info:
        await row.locator(f"a[data-file='{code}']").click()
    download = await info.value
    assert download.suggested_filename == f"clearing-{day.isoformat()}-{code}.csv"
    content = Path(await download.path()).read_text(encoding="utf-8")
    assert f"{day.isoformat()},{code}," in content


@session_loop
async def test_the_fund_report_draws_its_charts(
    console: Console, service: Service, operators: dict[str, Operator], catalog
):
    _code, pos = await _hospital(service)
    counter = await service.terminal("counter")
    p = await patient(service, pos, counter, balance=5000)
    await p.settle("310", "11", lines(("A-AMOX", 1000, 1)))
    await console.login(operators["auditor"])
    await console.go("#/reports")
    await _charts_drawn(console, ("chart-expenditure", "chart-per-day", "chart-flags"))
    await console.shot("reports")
    await console.page.set_viewport_size(TABLET)
    await _charts_drawn(console, ("chart-expenditure", "chart-per-day", "chart-flags"))
    await console.shot("reports")


async def _charts_drawn(console: Console, testids: tuple[str, ...]) -> None:
    for testid in testids:
        canvas = console.page.locator(f"[data-testid={testid}] canvas").first
        await canvas.wait_for()
        box = await canvas.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100, (testid, box)


@session_loop
async def test_without_the_chart_library_the_report_says_so(
    console: Console, operators: dict[str, Operator], monkeypatch: pytest.MonkeyPatch
):
    files = {**assets._files(), assets.ECHARTS_NAME: assets.STATIC / "not-installed.js"}
    monkeypatch.setattr(assets, "_files", lambda: files)
    await console.login(operators["auditor"])
    await console.go("#/reports")
    missing = console.page.locator("[data-testid=charts-unavailable]").first
    await missing.wait_for()
    assert "ECharts" in await missing.inner_text()
    assert await console.page.locator("[data-testid=report] canvas").count() == 0


@session_loop
async def test_an_auditor_reads_the_audit_log_and_has_it_verified(
    console: Console, service: Service, operators: dict[str, Operator]
):
    person = await service.person()
    await console.login(operators["auditor"])
    page = console.page
    await console.go("#/audit")
    filters = page.locator("[data-testid=audit-filter]")
    await filters.locator("input[name=object_id]").fill(person["psn_no"])
    await filters.locator("button[type=submit]").click()
    entries = page.locator("[data-testid=audit-results] tbody tr")
    # The person's own entry: before the filter's answer the table lists other persons'.
    await entries.filter(has_text=person["psn_no"]).filter(has_text="person.created").wait_for()
    await page.click("[data-testid=verify]")
    verdict = page.locator("[data-testid=verify-result]")
    await verdict.wait_for(timeout=120_000)
    # Other tests rewrite the log on purpose; the page shows whichever verdict it gets.
    assert await verdict.inner_text()
    await console.shot("audit")


@session_loop
async def test_the_public_page_shows_a_published_report_without_login(
    console: Console, as_admin: OperatorApi, service: Service, catalog
):
    # Only a period that is over is published (its figures are frozen): yesterday, with a
    # settlement moved there.
    yesterday = (clock.business_date() - dt.timedelta(days=1)).isoformat()
    _code, pos = await _hospital(service)
    p = await patient(service, pos, await service.terminal("counter"), balance=5000)
    paid = await p.settle("310", "11", lines(("A-AMOX", 1000, 1)))
    await _move_settlement(service, paid["setl_id"], dt.date.fromisoformat(yesterday))
    title = f"公开报表 {secrets.token_hex(3)}"
    period = {"period_from": yesterday, "period_to": yesterday, "title": title}
    published = await as_admin.ok("POST", "/v1/public-reports", period)
    await console.open(f"/public/#{published['report_id']}")
    page = console.page
    await page.locator(
        f"[data-testid=public-report][data-report='{published['report_id']}']"
    ).wait_for()
    text = await page.locator("#view").inner_text()
    # The day's one settlement: its bill would be that person's, so it is withheld.
    assert title in text and "¥10.00" not in text
    await _charts_drawn(console, ("chart-expenditure", "chart-per-day"))
    link = page.locator("[data-testid=public-csv]").first
    href = await link.get_attribute("href")
    assert href and href.endswith(".csv")
    answer = await page.request.get(console.base_url + href)
    assert answer.ok and "attachment" in answer.headers["content-disposition"]
    await console.shot("public")
    await page.set_viewport_size(TABLET)
    await console.shot("public")


@session_loop
async def test_a_clerk_cannot_reach_the_reviewers_pages(
    console: Console, operators: dict[str, Operator]
):
    await console.login(operators["clerk"])
    page = console.page
    assert await page.locator("#menu a[data-menu=reviews]").count() == 0
    for where in ("#/reviews", "#/flags", "#/audit", "#/operators"):
        await console.go(where)
        await page.locator("[data-testid=no-access]").wait_for()
    await console.shot("no-access")
    answer = await page.request.get(console.base_url + "/v1/reviews")
    assert answer.status == 403
    assert (await answer.json())["error"]["code"] == "ROLE_NOT_ALLOWED"


@session_loop
async def test_a_form_post_without_the_csrf_token_is_refused(
    console: Console, service: Service, operators: dict[str, Operator]
):
    """A plain HTML form (what another site could make a browser send) carries the cookie
    but never the X-CSRF-Token header: refused, and the card is untouched."""
    counter = await service.terminal("counter")
    person = await service.person()
    card = await issue_card(counter, person["psn_no"])
    await console.login(operators["clerk"])
    page = console.page
    async with page.expect_response(lambda r: r.url.endswith("/report-loss")) as info:
        await page.evaluate(
            """action => {
                const form = document.createElement("form");
                form.method = "POST";
                form.action = action;
                document.body.append(form);
                form.submit();
            }""",
            f"/v1/persons/{person['psn_no']}/cards/{card.card_no}/report-loss",
        )
    answer = await info.value
    assert answer.status == 403
    assert msgspec.json.decode(await answer.body())["error"]["code"] == "CSRF_FAILED"
    assert (await counter.call("GET", f"/v1/cards/{card.card_no}"))["status"] == "active"


@pytest_asyncio.fixture(loop_scope="session")
async def short_sessions(settings: Settings):
    """A second service on the same database whose console sessions end after 2 s idle."""
    from tests.conftest import free_port

    short = msgspec.structs.replace(settings, port=free_port(), operator_session_idle_seconds=2)
    runner = web.AppRunner(create_app(short))
    await runner.setup()
    await web.TCPSite(runner, short.host, short.port).start()
    yield f"http://{short.host}:{short.port}"
    await runner.cleanup()


@session_loop
async def test_an_idle_session_expires_and_the_console_asks_to_log_in_again(
    browser: Browser, short_sessions: str, operators: dict[str, Operator]
):
    context = await browser.new_context(viewport=DESKTOP, locale="zh-CN")
    try:
        console = Console(context, await context.new_page(), short_sessions)
        await console.login(operators["auditor"])
        await console.page.wait_for_timeout(3500)
        await console.go("#/reports")
        expired = console.page.locator("[data-testid=session-expired]")
        await expired.wait_for()
        # Expired, or already purged by the housekeeping (then the API says "invalid").
        assert "请重新登录" in await expired.inner_text()
        assert await console.page.locator("[data-testid=login]").is_visible()
        await console.shot("session-expired")
    finally:
        await context.close()


MAIN_PAGES = (
    "persons",
    "facilities",
    "reviews",
    "flags",
    "clearing",
    "reports",
    "terminals",
    "gateway-clients",
    "audit",
    "operators",
    "account",
)


@session_loop
async def test_every_page_loads_for_an_operator_with_every_role(
    console: Console, operators: dict[str, Operator], catalog
):
    """Each page answers without an error at desktop and tablet size, and fits the width."""
    await console.login(operators["all"])
    page = console.page
    for size in (DESKTOP, TABLET):
        await page.set_viewport_size(size)
        for name in MAIN_PAGES:
            await console.go(f"#/{name}")
            await page.locator(f"#menu a.active[data-menu='{name}']").wait_for()
            await page.wait_for_load_state("networkidle")
            assert await page.locator("[data-testid=load-error]").count() == 0, name
            assert await page.locator("[data-testid=no-access]").count() == 0, name
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, (name, size, overflow)
            await console.shot(f"page-{name}")
