"""Backend and pool state: health, ejection, draining and the counters the balancer decides on.

A `Backend` is created from a `BackendConfig` and lives as long as its id stays in its pool,
across reloads and Consul updates, so that health state and connection counts survive them.
Nothing here does I/O; health checks, outlier detection and the data plane change this state
through the small methods below.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import TYPE_CHECKING

from .compiled import fields
from .config import BackendConfig, PoolConfig

if TYPE_CHECKING:
    from .http.upstream import UpstreamConnection

log = logging.getLogger("balancer.pool")

# A pooled connection is reused only this far inside the backend's idle limit (announced in
# `Keep-Alive: timeout=N`, or seen when it closed an idle connection): the larger of a quarter
# of the limit and this many seconds. A request written as the backend closes is lost (a bet
# cannot be sent again), so the balancer gives the connection up well before.
KEEPALIVE_MARGIN = 0.25


class BackendState(str, enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    EJECTED = "ejected"
    DRAINING = "draining"


def too_many_ejected(ejected: int, usable: int, max_ejected_percent: float) -> bool:
    """Would ejection alone leave more than `max_ejected_percent` of the usable backends out?
    Then the pool is in panic mode and uses its ejected backends too."""
    return ejected * 100 > usable * max_ejected_percent


class Backend:
    """One backend of one pool. Per-request fields are plain ints for speed."""

    __slots__ = fields(__name__, "Backend")  # its .pxd declares them

    def __init__(self, pool_name: str, config: BackendConfig) -> None:
        self.pool_name = pool_name
        self.healthy = True
        self.ejected_until = 0.0
        self.ejections = 0  # how many times ejected so far: scales the next ejection
        self.consecutive_failures = 0
        self.draining = False
        self.drain_deadline = 0.0
        # Left its pool (reload / Consul): also draining, and dropped once its users are gone.
        self.removed = False
        # When slow start began (join after start-up, or recovery); 0.0 = full weight.
        self.ramp_start = 0.0
        self.active_requests = 0
        self.websockets = 0
        self.idle: list[UpstreamConnection] = []  # keep-alive connections, most recent last
        self.tunnels: set = set()  # open WebSocket exchanges, closed when a drain runs out
        self.open_connections = 0
        self.upstream_errors: dict[str, int] = {}
        self.health_checks: dict[str, int] = {}
        self.ejections_total = 0
        # Peak-EWMA of response latency in seconds (balance: ewma), and when it was last
        # updated; latency_at 0.0 means never measured (the strategy seeds it at the median).
        self.latency = 0.0
        self.latency_at = 0.0
        # The backend's idle limit for keep-alive connections, as it announced it and as it
        # was seen closing one (0.0: not known), and from them how long a pooled connection
        # may have been idle to be reused (0.0: the pool's timeouts.idle; < 0: never).
        self.keepalive_announced = 0.0
        self.keepalive_seen = 0.0
        self.reuse_within = 0.0
        # (why, Unix time) of the latest failed connect or health check; see failures.py
        self.last_failure: tuple[str, float] | None = None
        self.update(config)

    def update(self, config: BackendConfig) -> None:
        """Take a new config for the same id (reload, Consul): state and counters stay."""
        self.config = config
        self.id = config.id
        self.address = config.address
        self.host = config.address.host
        self.port = config.address.port
        self.region = config.region
        self.weight = config.weight
        self.source = config.source

    # -- state -------------------------------------------------------------------------

    def state(self, now: float | None = None) -> BackendState:
        now = time.monotonic() if now is None else now
        if self.draining:
            return BackendState.DRAINING
        if not self.healthy:
            return BackendState.UNHEALTHY
        if self.ejected_until > now:
            return BackendState.EJECTED
        return BackendState.HEALTHY

    @property
    def load(self) -> int:
        """What least_conn counts: requests in flight plus open WebSockets."""
        return self.active_requests + self.websockets

    def keepalive_announced_as(self, seconds: float) -> None:
        """A response said `Keep-Alive: timeout=N`."""
        if seconds != self.keepalive_announced:
            self.keepalive_announced = seconds
            self._settle_reuse()

    def idle_connection_closed(self, idle_for: float, ours: bool) -> None:
        """A pooled connection ended after `idle_for` seconds idle: closed by the backend (its
        idle limit, or a restart), or by our own timeouts.idle (`ours`), which shows the
        backend keeps connections at least that long. The latest closing wins, so a limit
        learnt from a restart's closings is corrected by the next ones."""
        seen = 0.0 if ours else idle_for
        if seen != self.keepalive_seen:
            self.keepalive_seen = seen
            self._settle_reuse()

    def _settle_reuse(self) -> None:
        known = [s for s in (self.keepalive_announced, self.keepalive_seen) if s > 0.0]
        if not known:
            self.reuse_within = 0.0
            return
        limit = min(known)
        within = limit - max(KEEPALIVE_MARGIN, limit * 0.25)
        self.reuse_within = within if within > 0.0 else -1.0

    def count_error(self, kind: str) -> None:
        self.upstream_errors[kind] = self.upstream_errors.get(kind, 0) + 1

    def __repr__(self) -> str:
        return f"<Backend {self.pool_name}/{self.id} {self.address}>"


class Pool:
    """The backends of one pool, keyed by id. Static backends come from the config, discovered
    ones from Consul; a backend that leaves either drains instead of being cut
    (docs/architecture.md, "Reload, discovery and faults")."""

    __slots__ = fields(__name__, "Pool")  # its .pxd declares them

    def __init__(self, config: PoolConfig) -> None:
        self.name = config.name
        self.config = config
        self.backends: dict[str, Backend] = {}
        # Backends that take part in balancing (not removed); a new list on every change, so
        # its identity tells caches (sticky token index) that membership moved.
        self.members: list[Backend] = []
        self.panics_total = 0
        self.retries_total = 0
        # Requests sent again on a fresh connection because a reused one closed before any
        # answer (not retries in the retries.attempts sense: nothing failed but the pool).
        self.stale_retries_total = 0
        self._static: tuple[BackendConfig, ...] = ()
        self._discovered: tuple[BackendConfig, ...] = ()
        self.created = time.monotonic()
        self.reconfigure(config)

    # -- membership -----------------------------------------------------------------------

    def reconfigure(self, config: PoolConfig) -> list[Backend]:
        """A reload: new settings and static backends; discovered backends are kept while the
        pool still has discovery (without it nothing would ever update them: they drain).
        Returns the backends dropped, whose pooled connections the caller closes."""
        self.config = config
        self._static = config.backends
        if config.discovery is None:
            self._discovered = ()
        return self._merge()

    def set_discovered(self, backends: list[BackendConfig]) -> list[Backend]:
        """A Consul update: the discovered part of the pool is now exactly `backends`.
        Returns the backends dropped, whose pooled connections the caller closes."""
        self._discovered = tuple(backends)
        return self._merge()

    def _merge(self) -> list[Backend]:
        now = time.monotonic()
        wanted: dict[str, BackendConfig] = {}
        for backend_config in self._static + self._discovered:
            wanted.setdefault(backend_config.id, backend_config)  # static wins a clash
        for backend_id, backend_config in wanted.items():
            backend = self.backends.get(backend_id)
            if backend is None:
                backend = Backend(self.name, backend_config)
                if self.config.slow_start > 0 and now - self.created > 1.0:
                    backend.ramp_start = now  # joined a running pool: ramp up
                self.backends[backend_id] = backend
            else:
                backend.update(backend_config)
                if backend.removed:  # came back before its drain ended
                    backend.removed = False
                    backend.draining = False
        for backend_id, backend in list(self.backends.items()):
            if backend_id not in wanted and not backend.removed:
                backend.removed = True
                self.start_drain(backend, now)
        _overdue, dropped = self.forget_drained(now)
        self.members = [b for b in self.backends.values() if not b.removed]
        return dropped

    def start_drain(self, backend: Backend, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if not backend.draining:
            backend.draining = True
            backend.drain_deadline = now + self.config.drain_timeout
            log.info("pool %s: backend %s draining (up to %.0fs)", self.name, backend.id,
                     self.config.drain_timeout)

    def stop_drain(self, backend: Backend) -> None:
        if backend.draining and not backend.removed:
            backend.draining = False
            log.info("pool %s: backend %s undrained", self.name, backend.id)

    def forget_drained(self, now: float) -> tuple[list[Backend], list[Backend]]:
        """Drop removed backends whose users are gone or whose drain ran out. Returns the ones
        whose deadline passed with WebSockets still open, and the ones dropped: the caller
        closes those WebSockets and the dropped ones' pooled connections (the pool does no I/O).

        With sticky cookies a backend's users include players between two requests, whom
        nothing here can count: a removed backend then stays until `drain_timeout`, so a
        player mid-game keeps their server (docs/decisions.md, Consul discovery)."""
        overdue: list[Backend] = []
        dropped: list[Backend] = []
        sticky = self.config.sticky is not None
        for backend_id, backend in list(self.backends.items()):
            if not backend.draining:
                continue
            expired = now >= backend.drain_deadline
            if expired and backend.tunnels:
                overdue.append(backend)
            if backend.removed and (expired or (backend.load == 0 and not sticky)):
                del self.backends[backend_id]
                dropped.append(backend)
        return overdue, dropped

    def get(self, backend_id: str) -> Backend | None:
        return self.backends.get(backend_id)

    # -- choosing -------------------------------------------------------------------------

    def eligible(self, now: float, allow_panic: bool = True) -> list[Backend]:
        """Backends that may take a new player: healthy, not ejected, not draining, not full.

        If ejection alone would leave more than `max_ejected_percent` of the pool out, the
        ejected ones come back (panic mode, as Envoy does): a pool that ejects everything
        serves nobody, while a pool of flaky backends still serves most players. A pinned
        jurisdiction asks without panic: it fails closed.
        """
        limit = self.config.max_connections_per_backend
        out: list[Backend] = []
        ejected: list[Backend] | None = None
        usable = 0
        for b in self.members:
            if b.draining or not b.healthy:
                continue
            usable += 1
            if b.ejected_until > now:
                if ejected is None:
                    ejected = []
                ejected.append(b)
                continue
            if b.active_requests + b.websockets < limit:
                out.append(b)
        if (ejected and allow_panic
                and too_many_ejected(len(ejected), usable, self.config.outlier.max_ejected_percent)):
            self.panics_total += 1
            out.extend([b for b in ejected if b.active_requests + b.websockets < limit])
        return out

    def eligibility(self, now: float) -> tuple[int, bool]:
        """For the status page and metrics, not the request path: how many backends may take a
        new player without panic, and whether the pool is in panic mode."""
        usable = ejected = 0
        for b in self.members:
            if b.draining or not b.healthy:
                continue
            usable += 1
            if b.ejected_until > now:
                ejected += 1
        panic = ejected > 0 and too_many_ejected(ejected, usable, self.config.outlier.max_ejected_percent)
        return len(self.eligible(now, allow_panic=False)), panic

    def is_usable(self, backend: Backend, now: float) -> bool:
        """May a sticky player stay on this backend? A draining backend keeps its players
        until its drain deadline; an unhealthy, ejected or full one does not."""
        if backend.draining and now >= backend.drain_deadline:
            return False
        return (
            backend.healthy
            and backend.ejected_until <= now
            and backend.active_requests + backend.websockets < self.config.max_connections_per_backend
        )
