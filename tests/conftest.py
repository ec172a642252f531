"""Shared fixtures: real backends, the real balancer on loopback ports chosen by the OS.

Tests run on uvloop, like the product. `start_balancer(yaml_text)` writes the config to a
temporary file, loads it through the real loader and starts the real `App` in the test's loop
with listeners and admin on port 0; it returns a handle with the ports and the app.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import textwrap
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from balancer.app import App
from balancer.config_file import load_config
from tests.fakes.backends import Backend
from tests.fakes.consul import FakeConsul
from tests.pki import Pki


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict:
    return {"uvloop": uvloop.new_event_loop}


class Running:
    """A balancer running in the test's event loop."""

    def __init__(self, app: App, path: Path) -> None:
        self.app = app
        self.path = path

    def port(self, listener: str | None = None) -> int:
        servers = self.app.listeners
        server = servers[listener] if listener else next(iter(servers.values()))
        return server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port()}"

    @property
    def admin_url(self) -> str:
        assert self.app.admin is not None
        return self.app.admin.url

    async def raw(self, data: bytes, read_timeout: float = 2.0, listener: str | None = None) -> bytes:
        """Send raw bytes, read until the balancer closes or goes quiet."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port(listener))
        writer.write(data)
        await writer.drain()
        chunks = []
        try:
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), read_timeout)
                if not chunk:
                    break
                chunks.append(chunk)
        except asyncio.TimeoutError:
            pass
        writer.close()
        return b"".join(chunks)

    async def reload_with(self, yaml_text: str, raw: bool = False) -> list[str]:
        """Rewrite the config (completed like `start_balancer` does unless `raw`) and reload."""
        self.path.write_text(textwrap.dedent(yaml_text) if raw else balancer_yaml(yaml_text))
        return await self.app.reload()

    async def stop(self) -> None:
        await self.app.shutdown()


def balancer_yaml(body: str, listeners: str | None = None) -> str:
    """Complete a test config: listener and admin on port 0 unless given."""
    head = listeners or "listeners:\n  - name: public\n    address: 127.0.0.1:0\n"
    if "admin:" not in body:
        head += "admin:\n  address: 127.0.0.1:0\n"
    return head + textwrap.dedent(body)


@pytest.fixture
async def start_balancer(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    started: list[Running] = []

    async def start(body: str, listeners: str | None = None, raw: bool = False) -> Running:
        path = tmp_path / f"balancer-{len(started)}.yaml"
        path.write_text(textwrap.dedent(body) if raw else balancer_yaml(body, listeners))
        config = load_config(str(path))
        app = App(config, str(path), asyncio.get_running_loop())
        await app.start()
        running = Running(app, path)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Awaitable[list[Backend]]]]:
    """`await backends(2)` or `await backends(("eu-1", "eu-west"), ("it-1", "eu-south"))`."""
    made: list[Backend] = []

    async def make(*specs: int | tuple[str, str | None] | str) -> list[Backend]:
        out = []
        for spec in specs:
            if isinstance(spec, int):
                group = [Backend(f"b{len(made) + i + 1}") for i in range(spec)]
            elif isinstance(spec, tuple):
                group = [Backend(spec[0], spec[1])]
            else:
                group = [Backend(spec)]
            for backend in group:
                await backend.start()
                made.append(backend)
                out.append(backend)
        return out

    yield make
    for backend in made:
        await backend.stop()


def pool_yaml(backends: list[Backend]) -> str:
    """A pool's `backends:` value as a one-line YAML flow list (safe inside any indentation)."""
    items = []
    for b in backends:
        region = f", region: {b.region}" if b.region else ""
        items.append(f"{{id: {b.name}, address: '{b.address}'{region}}}")
    return "[" + ", ".join(items) + "]"


def one_pool(backends: list, pool_extra: str = "", top: str = "") -> str:
    """A config with one catch-all route to pool `web`; extras are one-line YAML mappings."""
    return f"""
        {top}
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            backends: {pool_yaml(backends)}
            {pool_extra}
        """


@pytest.fixture
async def consul() -> AsyncIterator[FakeConsul]:
    """A started Consul double (tests/fakes/consul.py) for the discovery and registration tests."""
    fake = FakeConsul()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def new_ca(tmp_path: Path) -> Callable[[], Pki]:
    """`new_ca()`: a fresh certificate authority writing its files under tmp_path."""
    return lambda: Pki(tmp_path)


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Each browser call's bound (a page load, a script): generous, the machine may be busy.
BROWSER_WAIT = 30.0
needs_chromium = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="chromium and chromium-driver are not installed (scripts/system-packages installs them)",
)


@pytest.fixture(scope="module")
def launch_chromium() -> Iterator[Callable[..., object]]:
    """`launch_chromium(*args, browser_log=False)`: a headless Chromium (selenium) with a
    throw-away profile and the extra command-line `args`; blocking, so a test in the event
    loop calls it through a thread. Every browser launched is quit when the module is done."""
    from selenium import webdriver

    launched: list[tuple[object, str]] = []

    def launch(*args: str, browser_log: bool = False) -> webdriver.Chrome:
        profile = tempfile.mkdtemp(prefix="chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args):
            options.add_argument(arg)
        if browser_log:
            options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        chrome = webdriver.Chrome(options=options,
                                  service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
        launched.append((chrome, profile))
        chrome.set_page_load_timeout(BROWSER_WAIT)
        chrome.set_script_timeout(BROWSER_WAIT)
        return chrome

    yield launch
    for chrome, profile in launched:
        chrome.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A player without a cookie jar: each test decides exactly which cookies it sends."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


Samples = dict[tuple[str, frozenset], float]


def metric_samples(text: str) -> Samples:
    """A /metrics page as {(sample name, frozenset(labels)): value}."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


async def backends_seen(http: aiohttp.ClientSession, url: str, want: int, tries: int = 64) -> set[str]:
    """Which backends answer GET `url`: ask until `want` different ones answered, or `tries`
    asks (idle backends tie, and least_conn breaks ties at random)."""
    seen: set[str] = set()
    for _ in range(tries):
        async with http.get(url) as resp:
            seen.add((await resp.json())["backend"])
        if len(seen) >= want:
            break
    return seen
