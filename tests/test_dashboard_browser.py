"""The live dashboard in a real headless Chromium (Debian's; Playwright downloads nothing),
against a real gateway under real traffic: the numbers move, the endpoints and alerts show,
and nothing is blocked by the page's Content-Security-Policy or fails to load."""

import asyncio
import contextlib
import dataclasses
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    Request,
    Response,
    Route,
    async_playwright,
)

from surgeflow.config import AlertRuleSettings, AlertSettings
from surgeflow.server import running_gateway
from tests.gateway.conftest import API_KEY, make_service
from tests.tools import require_program

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
WAIT_MS = 10_000


def artifacts_dir() -> Path:
    directory = Path(os.environ.get("SURGEFLOW_ARTIFACTS_DIR") or ROOT / "test-artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    chromium = require_program("chromium", "apt-get install chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--headless=new"]
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclasses.dataclass
class Traffic:
    started: int = 0
    statuses: dict[int, int] = dataclasses.field(default_factory=dict)


@contextlib.asynccontextmanager
async def traffic(
    url: str, *, seconds: float = 10.0, max_requests: int = 400, concurrency: int = 4
) -> AsyncIterator[Traffic]:
    """Chat completions from ``concurrency`` clients until the block ends, ``seconds`` pass or
    ``max_requests`` are sent; every fourth at temperature 0 on a few prompts (cache hits)."""
    sent = Traffic()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def client(http: aiohttp.ClientSession) -> None:
        while sent.started < max_requests and loop.time() < deadline:
            sent.started += 1
            number = sent.started
            body = {
                "model": "sim-small",
                "temperature": 0 if number % 4 == 0 else 0.7,
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"question {number % 3}"}],
            }
            async with http.post("/v1/chat/completions", json=body) as response:
                await response.read()
                sent.statuses[response.status] = sent.statuses.get(response.status, 0) + 1

    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(url, headers=headers) as http:
        tasks = [asyncio.create_task(client(http)) for _ in range(concurrency)]
        try:
            yield sent
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [r for r in results if not isinstance(r, asyncio.CancelledError | None)]
    assert not failures, failures
    assert set(sent.statuses) == {200}, sent.statuses


@dataclasses.dataclass
class Problems:
    """What went wrong in the page: console errors (a CSP violation is one), uncaught
    exceptions, requests that failed or were answered with an error."""

    console: list[str] = dataclasses.field(default_factory=list)
    exceptions: list[str] = dataclasses.field(default_factory=list)
    requests: list[str] = dataclasses.field(default_factory=list)


async def open_dashboard(
    browser: Browser, url: str, *, dark: bool = False
) -> tuple[Page, Problems]:
    page = await browser.new_page(
        viewport={"width": 1280, "height": 900}, color_scheme="dark" if dark else "light"
    )
    problems = Problems()

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.console.append(f"{message.type}: {message.text}")

    def on_response(response: Response) -> None:
        if response.status >= 400:
            problems.requests.append(f"{response.url}: HTTP {response.status}")

    def on_failure(request: Request) -> None:
        problems.requests.append(f"{request.method} {request.url}: {request.failure}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.exceptions.append(str(error)))
    page.on("response", on_response)
    page.on("requestfailed", on_failure)
    # Reported by the page itself, in case a violation were ever not logged to the console.
    await page.add_init_script(
        "window.cspViolations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " (e) => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    response = await page.goto(f"{url}/dashboard")
    assert response is not None
    assert response.status == 200
    return page, problems


async def value(page: Page, element_id: str) -> float:
    """The raw figure behind a tile (its ``data-value``), not the rounded text."""
    raw = await page.get_attribute(f"#{element_id}", "data-value")
    assert raw, f"#{element_id} shows no value"
    return float(raw)


async def until_positive(page: Page, *element_ids: str) -> None:
    """Wait until each tile shows a figure above zero. Polled from here: Playwright's
    ``wait_for_function`` evaluates a string with ``eval`` when it has to poll, which the
    page's Content-Security-Policy (rightly) forbids."""
    deadline = asyncio.get_running_loop().time() + WAIT_MS / 1000
    while True:
        raws = [await page.get_attribute(f"#{id_}", "data-value") for id_ in element_ids]
        if all(raw and float(raw) > 0 for raw in raws):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"tiles {element_ids} still show {raws}")
        await asyncio.sleep(0.1)


async def assert_clean(page: Page, problems: Problems) -> None:
    assert await page.evaluate("window.cspViolations") == []
    assert problems.console == []
    assert problems.exceptions == []
    assert problems.requests == []


async def test_the_numbers_move_under_traffic(tmp_path: Path, browser: Browser) -> None:
    alerts = AlertSettings(interval_s=0.25)  # the default rules, sampled faster
    async with (
        make_service(tmp_path, alerts=alerts) as service,
        running_gateway(service) as url,
        traffic(url) as sent,
    ):
        page, problems = await open_dashboard(browser, url)
        await until_positive(page, "requests-total", "rps")
        first_total, first_rps = await value(page, "requests-total"), await value(page, "rps")
        first_update = await value(page, "updated-at")
        await asyncio.sleep(3)
        second_total, second_rps = await value(page, "requests-total"), await value(page, "rps")
        second_update = await value(page, "updated-at")
        started = sent.started

        assert 0 < first_total < second_total <= started
        assert first_rps > 0
        assert second_rps > 0
        assert second_update - first_update >= 2  # still polling, every second
        assert re.fullmatch(r"\d+(\.\d)?k?", await page.inner_text("#rps"))
        assert re.fullmatch(r"\d+(\.\d+)? m?s", await page.inner_text("#p99"))
        assert await page.get_attribute("#status", "data-state") == "live"

        rows = page.locator("#endpoints-body tr[data-model='sim-small']")
        shown = {
            await row.get_attribute("data-endpoint"): await row.get_attribute("data-state")
            for row in await rows.all()
        }
        configured = next(m for m in service.settings.models if m.name == "sim-small")
        assert shown == {endpoint.name: "healthy" for endpoint in configured.endpoints}

        assert await page.get_attribute("#alerts", "data-count") == "0"
        assert "No alerts" in await page.inner_text("#alerts")
        await page.screenshot(path=artifacts_dir() / "dashboard.png", full_page=True)
        await assert_clean(page, problems)


async def test_a_firing_alert_shows_in_red_and_a_pending_one_in_amber(
    tmp_path: Path, browser: Browser
) -> None:
    def anything(name: str, **rest: str) -> AlertRuleSettings:
        """A rule certainly true under any traffic: a median latency above zero."""
        return AlertRuleSettings(
            name=name, kind="latency", threshold=0.0, quantile=0.5, min_requests=1, **rest
        )

    alerts = AlertSettings(
        interval_s=0.25,
        rules=[anything("AnyTraffic", severity="page"), anything("SlowBurn", for_="1h")],
    )
    async with (
        make_service(tmp_path, alerts=alerts) as service,
        running_gateway(service) as url,
        traffic(url, max_requests=200),
    ):
        page, problems = await open_dashboard(browser, url, dark=True)
        firing = page.locator("#alerts li[data-alert='AnyTraffic']")
        await firing.wait_for(timeout=WAIT_MS)
        pending = page.locator("#alerts li[data-alert='SlowBurn']")
        await pending.wait_for(timeout=WAIT_MS)

        assert await firing.get_attribute("data-state") == "firing"
        assert await firing.locator(".badge.bad").inner_text() == "firing"
        assert "page" in await firing.inner_text()  # its severity
        assert await pending.get_attribute("data-state") == "pending"
        assert await pending.locator(".badge.warn").inner_text() == "pending"
        assert await page.get_attribute("#alerts", "aria-live") == "polite"
        assert service.alerts is not None
        states = {alert.rule.name: alert.state for alert in service.alerts.active.values()}
        assert states == {"AnyTraffic": "firing", "SlowBurn": "pending"}
        await page.screenshot(path=artifacts_dir() / "dashboard-alert.png", full_page=True)
        await assert_clean(page, problems)


async def test_the_page_says_disconnected_and_recovers(tmp_path: Path, browser: Browser) -> None:
    async with make_service(tmp_path) as service, running_gateway(service) as url:
        page, _ = await open_dashboard(browser, url)
        status = page.locator("#status")
        await page.wait_for_selector("#status[data-state='live']", timeout=WAIT_MS)

        async def refuse(route: Route) -> None:
            await route.abort("connectionrefused")

        await page.route("**/dashboard/data", refuse)
        await page.wait_for_selector("#status[data-state='disconnected']", timeout=WAIT_MS)
        assert "disconnected" in await status.inner_text()
        assert await page.evaluate("document.body.classList.contains('stale')")
        last_seen = await value(page, "updated-at")

        await page.unroute("**/dashboard/data", refuse)  # it keeps retrying, and comes back
        await page.wait_for_selector("#status[data-state='live']", timeout=WAIT_MS)
        assert not await page.evaluate("document.body.classList.contains('stale')")
        assert await value(page, "updated-at") > last_seen
