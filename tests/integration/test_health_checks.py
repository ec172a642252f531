"""Active health checks against real backends on loopback ports chosen by the OS."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
from aiohttp import web

from balancer.config import Address, BackendConfig, HealthCheckConfig, PoolConfig
from balancer.health import HealthChecker
from balancer.pool import Backend, Pool
from tests import waiting

INTERVAL = 0.05
# Probes of a live backend must not time out on a starved event loop (a failure would be
# counted where the tests assert none); the hanging-backend test sets its own short one.
TIMEOUT = 2.0


class HttpBackend:
    """An aiohttp backend whose /health status (or hanging) the test controls."""

    def __init__(self) -> None:
        self.status = 200
        self.hang = False
        self.requests = 0
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _health(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.hang:
            await self._release.wait()
        return web.Response(status=self.status, text="ok" if self.status < 400 else "bad")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def http_backend() -> AsyncIterator[HttpBackend]:
    backend = HttpBackend()
    await backend.start()
    yield backend
    await backend.stop()


@pytest.fixture
async def tcp_backend() -> AsyncIterator[asyncio.Server]:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server
    server.close()
    await server.wait_closed()


def make_pool(port: int, health_check: HealthCheckConfig | None, slow_start: float = 0.0) -> Pool:
    return Pool(
        PoolConfig(
            name="p",
            backends=(BackendConfig(id="a", address=Address("127.0.0.1", port)),),
            health_check=health_check,
            slow_start=slow_start,
        )
    )


def http_check(**overrides: object) -> HealthCheckConfig:
    config = HealthCheckConfig(
        path="/health", interval=INTERVAL, timeout=TIMEOUT,
        healthy_threshold=2, unhealthy_threshold=3, expect_status=(200, 399),
    )
    return replace(config, **overrides)


@pytest.fixture
async def checkers() -> AsyncIterator[list[HealthChecker]]:
    """Started checkers, stopped at the end of the test whatever happens."""
    started: list[HealthChecker] = []
    yield started
    for checker in started:
        await checker.stop()


def start(checkers: list[HealthChecker], pool: Pool) -> HealthChecker:
    checker = HealthChecker(pool)
    checker.start()
    checkers.append(checker)
    return checker


async def until(condition: Callable[[], bool], check: Callable[[], None] | None = None) -> None:
    """Wait for `condition`, calling `check` (assertions that must hold throughout) each step."""
    def checked() -> bool:
        if check is not None:
            check()
        return condition()

    await waiting.until(checked, step=0.005)


def checks(backend: Backend, result: str) -> int:
    return backend.health_checks.get(result, 0)


async def test_healthy_backend_stays_up_and_checks_are_counted(
    http_backend: HttpBackend, checkers: list[HealthChecker]
) -> None:
    pool = make_pool(http_backend.port, http_check())
    b = pool.backends["a"]
    start(checkers, pool)

    await until(lambda: checks(b, "success") >= 3)

    assert b.healthy
    assert checks(b, "failure") == 0
    assert set(b.health_checks) == {"success"}
    assert http_backend.requests >= 3


async def test_failing_status_goes_down_after_threshold_and_back_after_threshold(
    http_backend: HttpBackend, checkers: list[HealthChecker], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="balancer.health")
    http_backend.status = 500
    pool = make_pool(http_backend.port, http_check(unhealthy_threshold=3, healthy_threshold=2))
    b = pool.backends["a"]

    def down_only_after_three_failures() -> None:
        assert b.healthy == (checks(b, "failure") < 3)

    start(checkers, pool)
    await until(lambda: not b.healthy, check=down_only_after_three_failures)
    assert checks(b, "success") == 0

    http_backend.status = 200

    def up_only_after_two_successes() -> None:
        assert b.healthy == (checks(b, "success") >= 2)

    await until(lambda: b.healthy, check=up_only_after_two_successes)

    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "balancer.health"]
    assert [level for level, _ in messages] == [logging.WARNING, logging.INFO]
    assert "status 500" in messages[0][1]


async def test_stopped_backend_goes_down(
    http_backend: HttpBackend, checkers: list[HealthChecker]
) -> None:
    pool = make_pool(http_backend.port, http_check(unhealthy_threshold=2))
    b = pool.backends["a"]
    start(checkers, pool)
    await until(lambda: checks(b, "success") >= 1)

    await http_backend.stop()

    await until(lambda: not b.healthy)
    assert checks(b, "failure") >= 2


async def test_hanging_backend_goes_down(
    http_backend: HttpBackend, checkers: list[HealthChecker]
) -> None:
    http_backend.hang = True
    pool = make_pool(http_backend.port, http_check(timeout=0.1, unhealthy_threshold=2))
    b = pool.backends["a"]
    start(checkers, pool)

    await until(lambda: not b.healthy)

    assert checks(b, "success") == 0
    assert http_backend.requests >= 2  # it was reached, it just never answered


async def test_tcp_check(tcp_backend: asyncio.Server, checkers: list[HealthChecker]) -> None:
    port = tcp_backend.sockets[0].getsockname()[1]
    pool = make_pool(port, http_check(path=None, tcp=True, unhealthy_threshold=2))
    b = pool.backends["a"]
    start(checkers, pool)
    await until(lambda: checks(b, "success") >= 2)
    assert b.healthy

    tcp_backend.close()
    await tcp_backend.wait_closed()

    await until(lambda: not b.healthy)
    assert checks(b, "failure") >= 2


async def test_recovery_starts_slow_start_ramp(
    http_backend: HttpBackend, checkers: list[HealthChecker]
) -> None:
    http_backend.status = 503
    pool = make_pool(http_backend.port, http_check(unhealthy_threshold=2), slow_start=30.0)
    b = pool.backends["a"]
    start(checkers, pool)
    await until(lambda: not b.healthy)
    assert b.ramp_start == 0.0  # going down is no ramp

    before = time.monotonic()
    http_backend.status = 200
    await until(lambda: b.healthy)

    assert before <= b.ramp_start <= time.monotonic()


async def test_recovery_without_slow_start_keeps_full_weight(
    http_backend: HttpBackend, checkers: list[HealthChecker]
) -> None:
    http_backend.status = 503
    pool = make_pool(http_backend.port, http_check(unhealthy_threshold=2, healthy_threshold=1))
    b = pool.backends["a"]
    start(checkers, pool)
    await until(lambda: not b.healthy)

    http_backend.status = 200
    await until(lambda: b.healthy)

    assert b.ramp_start == 0.0


async def test_sync_follows_membership(
    http_backend: HttpBackend, checkers: list[HealthChecker]
) -> None:
    pool = make_pool(http_backend.port, http_check())
    a = pool.backends["a"]
    checker = start(checkers, pool)
    await until(lambda: checks(a, "success") >= 1)

    # A backend joins (as Consul or a reload would add it) and "a" leaves.
    joined = Backend("p", BackendConfig(id="b", address=Address("127.0.0.1", http_backend.port)))
    pool.backends["b"] = joined
    a.removed = True
    pool.members = [joined]
    checker.sync()

    await until(lambda: checks(joined, "success") >= 2)
    probes_of_a = checks(a, "success")
    await until(lambda: checks(joined, "success") >= 4)
    assert checks(a, "success") == probes_of_a


async def test_no_health_check_configured_does_nothing(
    http_backend: HttpBackend, checkers: list[HealthChecker]
) -> None:
    pool = make_pool(http_backend.port, None)
    start(checkers, pool)
    await asyncio.sleep(INTERVAL * 3)

    assert http_backend.requests == 0
    assert pool.backends["a"].health_checks == {}


async def test_stop_ends_probing(http_backend: HttpBackend) -> None:
    pool = make_pool(http_backend.port, http_check())
    checker = HealthChecker(pool)
    checker.start()
    await until(lambda: http_backend.requests >= 1)

    await checker.stop()
    seen = http_backend.requests
    await asyncio.sleep(INTERVAL * 3)

    assert http_backend.requests == seen
    assert pool.backends["a"].healthy  # stopping leaves state as it was


async def test_reload_that_removes_health_check_brings_backends_back(
    http_backend: HttpBackend, checkers: list[HealthChecker]
) -> None:
    http_backend.status = 500
    pool = make_pool(http_backend.port, http_check(unhealthy_threshold=1))
    b = pool.backends["a"]
    checker = start(checkers, pool)
    await until(lambda: not b.healthy)

    # Without active checks nothing could ever bring it back, and docs/architecture.md says a
    # backend without health_check counts as healthy.
    pool.config = replace(pool.config, health_check=None)
    checker.sync()
    seen = http_backend.requests
    await asyncio.sleep(INTERVAL * 3)

    assert b.healthy
    assert http_backend.requests == seen
