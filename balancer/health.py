"""Active health checks (HTTP / TCP probes), run by the control plane.

Active checks (`HealthChecker`) run one task per backend of a pool and flip `Backend.healthy`
after `healthy_threshold` / `unhealthy_threshold` consecutive results, so one lost probe never
takes a backend out and one lucky probe never brings a dead one back.

Passive outlier ejection and slow start are balancer/outlier.py: pure bookkeeping the data
plane calls on every upstream result, without this module's probes.

All state lives on `Backend` / `Pool` so it survives reloads; this module only changes it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from dataclasses import dataclass

from . import failures
from .config import HealthCheckConfig
from .pool import Backend, Pool
from .tls import BackendTls

log = logging.getLogger("balancer.health")

SUCCESS = "success"
FAILURE = "failure"

# Probe spacing varies by +-10% so the checks of many backends (and of several balancer
# instances) do not synchronise into bursts.
JITTER = 0.1
USER_AGENT = "casino-edge-balancer/health-check"


# -- active checks -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A backend's last probe, for the status page: passed, what was seen, when (unix time)."""

    ok: bool
    detail: str
    at: float


class _ProbeStreak:
    """Consecutive probe results of one backend; kept per checker, the verdict on the Backend."""

    __slots__ = ("successes", "failures")

    def __init__(self) -> None:
        self.successes = 0
        self.failures = 0


class HealthChecker:
    """Probes every member of one pool and keeps `Backend.healthy` up to date.

    Owns its tasks: `start()` once, `sync()` after every membership or
    config change of the pool, `await stop()` on shutdown or when a reload replaces it.
    The config is read afresh before every probe, so a reload that edits `health_check` in
    place takes effect at the next probe without resetting anyone's state.
    """

    def __init__(self, pool: Pool, tls: BackendTls | None = None) -> None:
        self.pool = pool
        # The pool's TLS to its backends (None: plain); a reload sets the new generation's.
        self.tls = tls
        self._tasks: dict[Backend, asyncio.Task[None]] = {}
        # Cancelled by sync() but maybe not finished yet: stop() still waits for them.
        self._retiring: set[asyncio.Task[None]] = set()
        self._streaks: dict[Backend, _ProbeStreak] = {}
        self.last_results: dict[str, CheckResult] = {}  # backend id -> its last probe
        self._started = False
        self._stopped = False

    @property
    def config(self) -> HealthCheckConfig | None:
        return self.pool.config.health_check

    def start(self) -> None:
        """Begin probing (needs a running event loop). Without `health_check`, does nothing."""
        self._started = True
        self.sync()

    def sync(self) -> None:
        """Match the probe tasks to the pool's current members and config."""
        if not self._started or self._stopped:
            return
        if self.config is None:
            self._disable()
            return
        members = set(self.pool.members)
        for backend in [b for b in self._tasks if b not in members]:
            self._retire(self._tasks.pop(backend))
            self._streaks.pop(backend, None)
            self.last_results.pop(backend.id, None)
        for backend in self.pool.members:
            if backend not in self._tasks:
                self._tasks[backend] = asyncio.get_running_loop().create_task(
                    self._run(backend), name=f"health-check {self.pool.name}/{backend.id}"
                )

    async def stop(self) -> None:
        """Cancel every probe. Backend state is left as it is, so a
        checker that replaces this one (reload) carries on from it."""
        self._stopped = True
        tasks = [*self._tasks.values(), *self._retiring]
        self._tasks.clear()
        self._retiring.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _disable(self) -> None:
        """`health_check` was removed by a reload: nothing would ever bring a backend that is
        down back, and without active checks a backend counts as healthy (docs/architecture.md)."""
        for task in self._tasks.values():
            self._retire(task)
        self._tasks.clear()
        self._streaks.clear()
        for backend in self.pool.members:
            if not backend.healthy:
                backend.healthy = True
                log.info("backend %s/%s (%s) is healthy: health check removed from config",
                         self.pool.name, backend.id, backend.address)

    def _retire(self, task: asyncio.Task[None]) -> None:
        task.cancel()
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _run(self, backend: Backend) -> None:
        streak = self._streaks.setdefault(backend, _ProbeStreak())
        while True:
            config = self.config
            if config is None:
                return
            started = time.monotonic()
            ok, detail = await self._probe(backend, config)
            self._apply(backend, streak, config, ok, detail)
            # Probes start every `interval`, however long the last one took: a frozen host
            # (every probe runs into `timeout`) is then out within unhealthy_threshold x
            # interval + timeout (docs/architecture.md), not threshold x (interval + timeout).
            spent = time.monotonic() - started
            await asyncio.sleep(max(0.0, config.interval * random.uniform(1 - JITTER, 1 + JITTER) - spent))

    async def _probe(self, backend: Backend, config: HealthCheckConfig) -> tuple[bool, str]:
        """One probe within `timeout`. Returns (passed, what it saw)."""
        try:
            async with asyncio.timeout(config.timeout):
                if config.tcp or config.path is None:
                    return await self._probe_tcp(backend)
                return await self._probe_http(backend, config)
        except TimeoutError:
            return False, f"no answer within {config.timeout:g}s"
        except ssl.SSLError as exc:  # the certificate, or the handshake, failed
            return False, failures.describe(exc)
        except OSError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a probe must never kill its task
            log.exception("health check of %s/%s raised unexpectedly", self.pool.name, backend.id)
            return False, f"{type(exc).__name__}: {exc}"

    async def _connect(self, backend: Backend) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A fresh connection for each probe: a reused keep-alive connection can hide a backend
        that no longer accepts new ones (full backlog, crashed acceptor, firewall). A TLS
        pool's connection includes the handshake: the certificate must verify."""
        tls = self.tls
        if tls is None:
            return await asyncio.open_connection(backend.host, backend.port)
        return await asyncio.open_connection(backend.host, backend.port, ssl=tls.context,
                                             server_hostname=tls.server_hostname(backend.host))

    async def _probe_tcp(self, backend: Backend) -> tuple[bool, str]:
        _reader, writer = await self._connect(backend)
        writer.close()
        await writer.wait_closed()
        return True, "connected"

    async def _probe_http(self, backend: Backend, config: HealthCheckConfig) -> tuple[bool, str]:
        """GET `path` and read the status line, nothing more (the body is not the verdict).
        Redirects are not followed: a 3xx is the backend's own answer (200-399 by default)."""
        reader, writer = await self._connect(backend)
        try:
            writer.write(f"GET {config.path} HTTP/1.1\r\nHost: {backend.address}\r\n"
                         f"User-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
                         .encode("latin-1"))
            status = await _final_status(reader)
        finally:
            writer.close()
        if status is None:
            return False, "no HTTP answer"
        lo, hi = config.expect_status
        if lo <= status <= hi:
            return True, f"status {status}"
        return False, f"status {status}, expected {lo}-{hi}"

    def _apply(
        self, backend: Backend, streak: _ProbeStreak, config: HealthCheckConfig, ok: bool, detail: str
    ) -> None:
        """Count the probe and flip the backend's health once a threshold is reached."""
        key = SUCCESS if ok else FAILURE
        backend.health_checks[key] = backend.health_checks.get(key, 0) + 1
        self.last_results[backend.id] = CheckResult(ok, detail, time.time())
        if ok:
            streak.failures = 0
            streak.successes += 1
            if not backend.healthy and streak.successes >= config.healthy_threshold:
                self._mark_healthy(backend, streak.successes)
        else:
            backend.last_failure = (f"health check: {detail}", time.time())
            streak.successes = 0
            streak.failures += 1
            if backend.healthy and streak.failures >= config.unhealthy_threshold:
                self._mark_unhealthy(backend, streak.failures, detail)

    def _mark_unhealthy(self, backend: Backend, failures: int, detail: str) -> None:
        backend.healthy = False
        log.warning("backend %s/%s (%s) is down: %d consecutive failed health checks (last: %s)",
                    self.pool.name, backend.id, backend.address, failures, detail)

    def _mark_healthy(self, backend: Backend, successes: int) -> None:
        backend.healthy = True
        # Failures seen by real traffic while it was down belong to the outage, not to the
        # recovered backend.
        backend.consecutive_failures = 0
        if self.pool.config.slow_start > 0:
            backend.ramp_start = time.monotonic()
        log.info("backend %s/%s (%s) is back: %d consecutive passed health checks",
                 self.pool.name, backend.id, backend.address, successes)


async def _final_status(reader: asyncio.StreamReader) -> int | None:
    """The status of the first non-1xx response head; None when what came is no HTTP."""
    try:
        while True:
            parts = (await reader.readline()).split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                return None
            status = int(parts[1])
            while (await reader.readline()).strip():  # the rest of the head
                pass
            if status >= 200 or status == 101:
                return status
    except ValueError:  # a line longer than the reader's limit (64 KiB)
        return None
