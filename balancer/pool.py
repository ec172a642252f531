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

from .config import BackendConfig, PoolConfig

if TYPE_CHECKING:
    from .http.upstream import UpstreamConnection

log = logging.getLogger("balancer.pool")


class BackendState(str, enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    EJECTED = "ejected"
    DRAINING = "draining"


class Backend:
    """One backend of one pool. Per-request fields are plain ints for speed."""

    __slots__ = (
        "pool_name", "config", "id", "address", "host", "port", "region", "weight", "source",
        "healthy", "ejected_until", "ejections", "consecutive_failures",
        "draining", "drain_deadline", "removed", "joined_at", "ramp_start",
        "active_requests", "websockets", "idle", "open_connections",
        "upstream_errors", "health_checks", "ejections_total", "requests_total",
        "label_key",
    )

    def __init__(self, pool_name: str, config: BackendConfig, now: float | None = None) -> None:
        self.pool_name = pool_name
        self.healthy = True
        self.ejected_until = 0.0
        self.ejections = 0  # how many times ejected so far: scales the next ejection
        self.consecutive_failures = 0
        self.draining = False
        self.drain_deadline = 0.0
        # Left its pool (reload / Consul): also draining, and dropped once its users are gone.
        self.removed = False
        self.joined_at = time.monotonic() if now is None else now
        # When slow start began (join after start-up, or recovery); 0.0 = full weight.
        self.ramp_start = 0.0
        self.active_requests = 0
        self.websockets = 0
        self.idle: list[UpstreamConnection] = []  # keep-alive connections, most recent last
        self.open_connections = 0
        self.upstream_errors: dict[str, int] = {}
        self.health_checks: dict[str, int] = {}
        self.ejections_total = 0
        self.requests_total = 0
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
        self.label_key = (self.pool_name, self.id)

    # -- state -------------------------------------------------------------------------

    def is_ejected(self, now: float) -> bool:
        return self.ejected_until > now

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

    def count_error(self, kind: str) -> None:
        self.upstream_errors[kind] = self.upstream_errors.get(kind, 0) + 1

    def __repr__(self) -> str:
        return f"<Backend {self.pool_name}/{self.id} {self.address}>"


class Pool:
    """The backends of one pool, keyed by id, in config order."""

    __slots__ = ("name", "config", "backends", "members", "panics_total")

    def __init__(self, config: PoolConfig) -> None:
        self.name = config.name
        self.config = config
        self.backends: dict[str, Backend] = {}
        # Backends that take part in balancing (not removed); rebuilt on every membership change.
        self.members: list[Backend] = []
        self.panics_total = 0
        for backend_config in config.backends:
            self.backends[backend_config.id] = Backend(self.name, backend_config)
        self._rebuild()

    def _rebuild(self) -> None:
        self.members = [b for b in self.backends.values() if not b.removed]

    def get(self, backend_id: str) -> Backend | None:
        return self.backends.get(backend_id)

    def eligible(self, now: float) -> list[Backend]:
        """Backends that may take a new player: healthy, not ejected, not draining, not full.

        If ejection alone would leave more than `max_ejected_percent` of the pool out, the
        ejected ones come back (panic mode, as Envoy does): a pool that ejects everything
        serves nobody, while a pool of flaky backends still serves most players.
        """
        limit = self.config.max_connections_per_backend
        out: list[Backend] = []
        ejected: list[Backend] = []
        usable = 0
        for b in self.members:
            if b.draining or not b.healthy:
                continue
            usable += 1
            if b.ejected_until > now:
                ejected.append(b)
                continue
            if b.active_requests + b.websockets < limit:
                out.append(b)
        if ejected and usable and len(ejected) * 100 > usable * self.config.outlier.max_ejected_percent:
            self.panics_total += 1
            out.extend(b for b in ejected if b.active_requests + b.websockets < limit)
        return out

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
