"""What the status page, `/status` and `/admin/pools` tell: the instance, its listeners, every
pool with its backends and their last minute of traffic, the Consul watches.

Built in the process that runs the admin listener from the state /metrics reads. The counters
only ever grow, so "the last minute" is the difference between now and a sample of them taken
about a minute ago: `RecentTraffic` keeps those samples (one every few seconds, off the
request path).
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import compiled, version
from .config import worker_count
from .outlier import effective_weight
from .metrics import BUCKETS, Stats

if TYPE_CHECKING:
    from .app import App

WINDOW = 60.0  # seconds of traffic the per-backend rates cover
SAMPLE_INTERVAL = 5.0  # how often the admin process samples the counters
MIN_SPACING = 1.0  # samples closer than this replace each other (a page polled very often)


@dataclass(slots=True)
class _Sample:
    at: float  # monotonic
    # (pool, backend) -> [requests, of which 5xx]
    counts: dict[tuple[str, str], list[int]]
    # (pool, backend) -> duration histogram (metrics.Stats layout)
    durations: dict[tuple[str, str], list[float]]


class RecentTraffic:
    """Samples of the per-backend counters over the last `WINDOW` seconds (and one older)."""

    def __init__(self) -> None:
        self._samples: deque[_Sample] = deque()

    def record(self, stats: Stats, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        counts: dict[tuple[str, str], list[int]] = {}
        for (_route, pool, backend, _method, code), value in stats.requests.items():
            entry = counts.get((pool, backend))
            if entry is None:
                entry = counts[(pool, backend)] = [0, 0]
            entry[0] += value
            if code >= 500:
                entry[1] += value
        sample = _Sample(now, counts, {k: list(v) for k, v in stats.backend_durations.items()})
        samples = self._samples
        if len(samples) >= 2 and now - samples[-1].at < MIN_SPACING:
            samples[-1] = sample
        else:
            samples.append(sample)
        # Keep the newest sample that is at least WINDOW old: the window's base.
        while len(samples) >= 2 and samples[1].at <= now - WINDOW:
            samples.popleft()

    def window(self) -> float:
        """The seconds the current figures cover (WINDOW once the balancer runs long enough)."""
        if len(self._samples) < 2:
            return 0.0
        return self._samples[-1].at - self._samples[0].at

    def backend(self, pool: str, backend: str) -> dict:
        """Requests per second, 5xx share and p99 (seconds) of one backend over the window;
        None where there is nothing to tell (no requests)."""
        out: dict = {"requests_per_second": None, "error_share": None, "p99_seconds": None}
        seconds = self.window()
        if seconds <= 0:
            return out
        first, last = self._samples[0], self._samples[-1]
        key = (pool, backend)
        now_counts = last.counts.get(key, [0, 0])
        then_counts = first.counts.get(key, [0, 0])
        # max(0, ...): a worker that missed a snapshot makes a sum go down for a moment.
        requests = max(0, now_counts[0] - then_counts[0])
        errors = max(0, now_counts[1] - then_counts[1])
        out["requests_per_second"] = requests / seconds
        if requests:
            out["error_share"] = min(1.0, errors / requests)
            now_hist = last.durations.get(key)
            if now_hist is not None:
                then_hist = first.durations.get(key) or [0.0] * len(now_hist)
                out["p99_seconds"] = quantile(0.99, [max(0.0, a - b) for a, b in zip(now_hist, then_hist)])
        return out


def quantile(q: float, hist: list[float]) -> float | None:
    """The q-quantile of a histogram in the Stats layout (per-bucket counts, +Inf, sum),
    interpolated within its bucket as Prometheus' histogram_quantile does."""
    counts = hist[:len(BUCKETS) + 1]
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for index, count in enumerate(counts):
        if seen + count >= rank and count > 0:
            if index == len(BUCKETS):  # the +Inf bucket: the highest bound is all we know
                return BUCKETS[-1]
            lower = BUCKETS[index - 1] if index else 0.0
            upper = BUCKETS[index]
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return BUCKETS[-1]


# -- the documents ------------------------------------------------------------------------------


def status_document(app: App) -> dict:
    """GET /status: everything the status page shows."""
    return {
        "instance": instance_doc(app),
        "listeners": listeners_doc(app),
        "pools": pools_doc(app),
        "consul": consul_doc(app),
    }


def instance_doc(app: App) -> dict:
    reload = app.last_reload
    return {
        "version": version(),
        "pid": os.getpid(),
        "started_at": app.started_at,
        "uptime_seconds": time.time() - app.started_at,
        "workers": worker_count(app.config),
        "config_file": os.path.abspath(app.config_path) if app.config_path else None,
        "data_plane": compiled.describe(),
        "last_reload": None if reload is None else {
            "at": reload.at, "result": "failure" if reload.errors else "success",
            "errors": list(reload.errors),
        },
        # The page asks for the token only when /admin/* needs one.
        "admin_token_required": bool(os.environ.get(app.config.admin.token_env)),
    }


def listeners_doc(app: App) -> list[dict]:
    stats = app.stats_for_scrape()
    per_instance = app.config.limits.max_connections * worker_count(app.config)
    out = []
    for listener in app.config.listeners:
        server = app.listeners.get(listener.name)
        if server is not None:
            port = server.port
        else:  # workers own the sockets: where they were bound, unless a reload moved it
            configured, bound = app.worker_listeners.get(listener.name, (None, 0))
            port = bound if configured == listener.address else listener.address.port
        host = listener.address.host
        out.append({
            "name": listener.name,
            "address": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "tls": listener.tls is not None,
            "proxy_protocol": listener.proxy_protocol,
            "connections": stats.connections.get(listener.name, 0),
            "max_connections": per_instance,
            "connection_limit_reached": stats.connection_limit_reached.get(listener.name, 0),
        })
    return out


def pools_doc(app: App) -> list[dict]:
    """The pools with their backends: /admin/pools and the page."""
    now = time.monotonic()
    out = []
    for name, pool in app.pools.items():
        checker = app.control.health.get(name) if app.control is not None else None
        checks = checker.last_results if checker is not None else {}
        eligible, panic = pool.eligibility(now)
        backends = []
        for b in pool.backends.values():
            state = b.state(now).value
            weight_now = effective_weight(b, now, pool.config.slow_start)
            check = checks.get(b.id)
            backends.append({
                "id": b.id, "address": str(b.address), "region": b.region, "weight": b.weight,
                "source": b.source, "state": state,
                # a healthy backend still ramping up its share after joining or recovering
                "slow_start": state == "healthy" and weight_now < b.weight,
                "effective_weight": round(weight_now, 3),
                "active_requests": b.active_requests, "websockets": b.websockets,
                "last_minute": app.recent.backend(name, b.id),
                "last_check": None if check is None else {
                    "ok": check.ok, "detail": check.detail, "at": check.at},
                "last_failure": _failure(b.last_failure),
            })
        out.append({"name": name, "eligible_backends": eligible, "panic": panic,
                    "window_seconds": app.recent.window(), "backends": backends})
    return out


def _failure(failure: tuple[str, float] | None) -> dict | None:
    """Why the backend last could not be reached (a connect, or a health check), and when."""
    if failure is None:
        return None
    reason, when = failure
    return {"reason": reason, "at": when}


def consul_doc(app: App) -> list[dict]:
    out = []
    watches = app.control.watches if app.control is not None else {}
    for pool_name, watch in watches.items():
        out.append({
            "pool": pool_name, "service": watch.service,
            "last_success": watch.last_success,
            "failing": watch.failing, "failures": watch.failures,
            "outage_since": watch.outage_since,
            "updates": dict(watch.updates),
        })
    return out
