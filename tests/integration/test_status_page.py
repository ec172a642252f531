"""The status page on the admin listener, in a real headless Chromium driven by selenium.

The balancer runs in the test's event loop, so every (blocking) browser call goes through a
thread (`Browser`), and waiting means polling the page until it shows what a user would see.
A screenshot of each run is saved under tests/artifacts/ (git ignores it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import BROWSER_WAIT, Running, needs_chromium, pool_yaml

selenium = pytest.importorskip("selenium")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
# Generous: the page refreshes every 2 s, and the machine may be busy.
WAIT = BROWSER_WAIT

pytestmark = [
    needs_chromium,
    # Starting Chromium and a dozen waits of up to WAIT each, on a busy machine.
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def driver(launch_chromium):
    return launch_chromium("--window-size=1400,2000", browser_log=True)


class Browser:
    """The driver, called from a thread so that the balancer's loop keeps serving meanwhile."""

    def __init__(self, chrome) -> None:
        self.chrome = chrome

    async def call(self, fn, *args):
        return await asyncio.to_thread(fn, *args)

    async def open(self, url: str) -> None:
        await self.call(self.chrome.get, url)
        # A fresh tab per test: sessionStorage (the token) must not carry over.
        await self.call(self.chrome.execute_script, "sessionStorage.clear();")
        await self.call(self.chrome.refresh)

    async def until(self, what: str, condition) -> object:
        """Wait until `condition(chrome)` is truthy; fail with `what` and the page text."""
        def wait():
            try:
                return WebDriverWait(self.chrome, WAIT, poll_frequency=0.1,
                                     ignored_exceptions=(WebDriverException,)).until(condition)
            except Exception as exc:
                body = self.chrome.find_element(By.TAG_NAME, "body").text
                raise AssertionError(f"the page never showed {what}:\n{body}") from exc
        return await self.call(wait)

    async def text(self, css: str) -> str:
        return await self.call(lambda: self.chrome.find_element(By.CSS_SELECTOR, css).text)

    async def shows(self, css: str, expected: str) -> None:
        def check(chrome):
            elements = chrome.find_elements(By.CSS_SELECTOR, css)
            return elements and elements[0].is_displayed() and expected in elements[0].text
        await self.until(f"{expected!r} in {css}", check)

    async def click(self, css: str) -> None:
        await self.call(lambda: self.chrome.find_element(By.CSS_SELECTOR, css).click())

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        await self.call(self.chrome.save_screenshot, str(path))
        return path

    async def console_errors(self) -> list[str]:
        entries = await self.call(self.chrome.get_log, "browser")
        return [e["message"] for e in entries if e["level"] == "SEVERE"]


def cell(pool: str, backend: str, column: str) -> str:
    return f'section.pool[data-pool="{pool}"] tr[data-backend="{backend}"] td.{column}'


def button(pool: str, backend: str) -> str:
    return f'section.pool[data-pool="{pool}"] tr[data-backend="{backend}"] button'


async def admin_state(http: aiohttp.ClientSession, lb: Running, pool: str, backend: str,
                      headers: dict | None = None) -> str:
    async with http.get(lb.admin_url + "/admin/pools", headers=headers) as resp:
        assert resp.status == 200
        doc = await resp.json()
    (found,) = [b for p in doc["pools"] if p["name"] == pool for b in p["backends"] if b["id"] == backend]
    return found["state"]


async def two_pools(start_balancer, backends, admin: str = "", top: str = "",
                    more_pools: str = "") -> tuple[Running, list]:
    """Pools `games` (health-checked, slow start) and `lobby`, and one-line YAML extras: `admin`
    keys, a `top` section, `more_pools`."""
    g1, g2, lobby = await backends(("g1", "eu-west"), ("g2", "eu-south"), ("lobby-1", "eu-west"))
    lb = await start_balancer(f"""
        admin:
          address: 127.0.0.1:0
          {admin}
        {top}
        routes:
          - {{name: lobby, match: {{path_prefix: /lobby}}, pool: lobby}}
          - {{name: games, pool: games}}
        pools:
          games:
            backends: {pool_yaml([g1, g2])}
            health_check: {{path: /health, interval: 0.2s, timeout: 1s, unhealthy_threshold: 1}}
            slow_start: 60s
          lobby:
            backends: {pool_yaml([lobby])}
          {more_pools}
        """)
    return lb, [g1, g2, lobby]


async def test_the_page_shows_the_balancer_and_drains_with_its_button(start_balancer, backends, http, driver,
                                                                     consul):
    (t1,) = await backends("t1")
    consul.add_instance("tables", "t1", address="127.0.0.1", port=t1.port)
    lb, (_, g2, _) = await two_pools(
        start_balancer, backends,
        top=f"consul: {{address: {consul.address}, wait: 1s}}",
        more_pools="tables: {discovery: {consul: {service: tables}}}")
    for path in ("/lobby", "/game", "/game", "/game"):
        async with http.get(lb.url + path) as resp:
            assert resp.status == 200
    page = Browser(driver)
    await page.open(lb.admin_url + "/")

    # The instance, the listener, both pools with their backends.
    await page.shows('#instance dd[data-field="config file"]', str(lb.path))
    await page.shows('#instance dd[data-field="workers"]', "1")
    await page.shows('#instance dd[data-field="last-reload"]', "none since start")
    await page.shows("#listeners tbody tr", "public")
    await page.shows(cell("games", "g1", "state"), "healthy")
    await page.shows(cell("games", "g2", "state"), "healthy")
    await page.shows(cell("lobby", "lobby-1", "state"), "healthy")
    row = await page.text('section.pool[data-pool="games"] tr[data-backend="g2"]')
    assert "eu-south" in row and "static" in row
    # The active health check's last result, and traffic counted over the last minute.
    await page.shows(cell("games", "g1", "check"), "passed: status 200")
    await page.shows(cell("lobby", "lobby-1", "errors"), "0.0%")
    assert await page.text(cell("lobby", "lobby-1", "check")) == "–"  # no health_check there
    assert await page.text('section.pool[data-pool="games"] .eligible') == "2 eligible"
    await page.shows(cell("tables", "t1", "state"), "healthy")
    assert "consul" in await page.text('section.pool[data-pool="tables"] tr[data-backend="t1"]')
    await page.shows('#consul tr[data-key="tables"]', "ago")
    assert "none" in await page.text('#consul tr[data-key="tables"]')

    # Drain g1 with its button: the page and the API agree.
    await page.click(button("games", "g1"))
    await page.shows(cell("games", "g1", "state"), "draining")
    await page.shows("#message", "g1 in pool games: draining")
    assert await admin_state(http, lb, "games", "g1") == "draining"
    await page.shows('section.pool[data-pool="games"] .eligible', "1 eligible")
    await page.shows(button("games", "g1"), "Undrain")
    shot = await page.screenshot("status-page.png")
    assert shot.stat().st_size > 0

    # ... and back.
    await page.click(button("games", "g1"))
    await page.shows(cell("games", "g1", "state"), "healthy")
    assert await admin_state(http, lb, "games", "g1") == "healthy"

    # A backend that stops answering its health checks, then comes back ramping up.
    await g2.stop()
    await page.shows(cell("games", "g2", "state"), "unhealthy")
    await page.shows(cell("games", "g2", "check"), "failed: ")
    await g2.start()
    await page.shows(cell("games", "g2", "state"), "slow start")
    assert " of 1" in await page.text(f'section.pool[data-pool="games"] tr[data-backend="g2"]')

    # Consul unreachable: the outage shows, and when it began.
    consul.fail()
    await page.shows('#consul tr[data-key="tables"]', "unreachable for")
    await page.screenshot("status-page-outage.png")
    consul.recover()

    # A refused reload shows as failed, with its error.
    lb.path.write_text(lb.path.read_text().replace("pools:", "pools:\n  broken: 1\n", 1))
    assert await lb.app.reload()
    await page.shows('#instance dd[data-field="last-reload"]', "failure")
    await page.shows('#instance dd[data-field="last-reload"]', "pools.broken")

    # The strict Content-Security-Policy let everything the page needs run.
    assert await page.console_errors() == []


async def test_with_an_admin_token_the_page_reads_freely_and_drains_only_with_it(
        start_balancer, backends, http, driver, monkeypatch):
    monkeypatch.setenv("STATUS_PAGE_TEST_TOKEN", "s3cret-token")
    lb, _ = await two_pools(start_balancer, backends, admin="token_env: STATUS_PAGE_TEST_TOKEN")
    auth = {"Authorization": "Bearer s3cret-token"}
    page = Browser(driver)
    await page.open(lb.admin_url + "/")

    # Asked once for the token; declining leaves a readable page.
    await page.shows("#token", "Admin token")
    await page.click("#token-skip")
    await page.shows(cell("games", "g1", "state"), "healthy")

    # Without the token a drain is refused with a clear message, and nothing changes.
    await page.click(button("games", "g1"))
    await page.shows("#message", "drain g1 refused: this balancer needs its admin token")
    assert await admin_state(http, lb, "games", "g1", auth) == "healthy"

    # A wrong token is refused by the balancer (401) and forgotten.
    await page.call(lambda: driver.find_element(By.ID, "token-input").send_keys("wrong"))
    await page.click("#token-save")
    await page.click(button("games", "g1"))
    await page.shows("#message", "the admin token was not accepted (401)")
    assert await admin_state(http, lb, "games", "g1", auth) == "healthy"

    # The right one, kept for this tab only, drains.
    await page.call(lambda: driver.find_element(By.ID, "token-input").send_keys("s3cret-token"))
    await page.click("#token-save")
    await page.click(button("games", "g1"))
    await page.shows(cell("games", "g1", "state"), "draining")
    assert await admin_state(http, lb, "games", "g1", auth) == "draining"
    kept = await page.call(driver.execute_script, "return sessionStorage.getItem('balancer-admin-token');")
    assert kept == "s3cret-token"
    assert await page.call(driver.execute_script, "return localStorage.length;") == 0
    await page.screenshot("status-page-token.png")


async def test_the_page_is_served_with_a_strict_policy_and_nothing_external(start_balancer, backends, http):
    lb, _ = await two_pools(start_balancer, backends)
    async with http.get(lb.admin_url + "/") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/html")
        policy = resp.headers["Content-Security-Policy"]
        html = await resp.text()
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "http://" not in html and "https://" not in html and "<style" not in html
    assert "<script>" not in html and " style=" not in html  # no inline code or style
    for name, kind in (("status.js", "text/javascript"), ("status.css", "text/css")):
        async with http.get(f"{lb.admin_url}/{name}") as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith(kind)
            assert "http://" not in await resp.text()
