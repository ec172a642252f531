"""Every metric of docs/monitoring.md, defined once.

The request path only bumps plain ints in dicts (`Stats`) and on Backend objects, because a
labelled prometheus-client child per event is too slow for it (docs/decisions.md). At
scrape time `BalancerCollector` turns that state into metric families (prometheus-client's
custom collector API). With several workers, each worker's `snapshot()` is summed by the
parent, which is also why the snapshot is plain JSON-able data.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .compiled import fields
from .pool import BackendState, Pool

BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                              2.5, 5.0, 10.0, 30.0, 60.0)
_BUCKETS = BUCKETS  # the same, as a C global when compiled (BUCKETS stays public)
_BUCKET_COUNT = len(BUCKETS)
_CODE_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class RequestLine:
    """What one (route, pool, backend, method, code) bumps: its request count, the duration
    histogram of its (route, pool, code class), which it shares with the other lines of that
    class, and its backend's duration histogram (the status page's p99 per backend). Found
    with one dict lookup per request."""

    __slots__ = fields(__name__, "RequestLine")  # its .pxd declares them

    def __init__(self, hist: list[float], backend_hist: list[float]) -> None:
        self.count = 0
        self.hist = hist
        self.backend_hist = backend_hist


class LogCounts:
    """Access-log lines written and dropped: what an AccessLog counts (its `lines` and
    `dropped`), summed over workers."""

    __slots__ = ("lines", "dropped")

    def __init__(self, lines: int = 0, dropped: int = 0) -> None:
        self.lines = lines
        self.dropped = dropped


class Stats:
    """Per-process request counters, bumped on the request path."""

    __slots__ = fields(__name__, "Stats")  # its .pxd declares them

    def __init__(self) -> None:
        # (route, pool, backend, method bytes, code) -> its counters
        self._lines: dict[tuple[str, str, str, bytes, int], RequestLine] = {}
        # (route, pool, code_class) -> [bucket counts..., +Inf count, sum]
        self.durations: dict[tuple[str, str, str], list[float]] = {}
        # (pool, backend) -> the same histogram layout, over every route and code
        self.backend_durations: dict[tuple[str, str], list[float]] = {}
        self.rejected: dict[tuple[str, str], int] = {}  # (listener, reason) -> count
        self.connections: dict[str, int] = {}  # listener -> open client connections
        # listener -> times it reached max_connections and stopped accepting
        self.connection_limit_reached: dict[str, int] = {}
        self.reloads: dict[str, int] = {"success": 0, "failure": 0}
        self.mirrored: dict[tuple[str, str, str], int] = {}  # (route, pool, result) -> copies
        # The process's AccessLog (balancer/access_log.py), or LogCounts summed over workers.
        self.access_log: LogCounts = LogCounts()

    @property
    def requests(self) -> dict[tuple[str, str, str, bytes, int], int]:
        """(route, pool, backend, method bytes, code) -> requests answered."""
        return {key: line.count for key, line in self._lines.items()}

    def request(self, route: str, pool: str, backend: str, method: bytes, code: int,
                seconds: float) -> None:
        key = (route, pool, backend, method, code)
        line = self._lines.get(key)
        if line is None:
            line = self._line(key)
        line.count += 1
        hist = line.hist
        # bisect_left(BUCKETS, seconds), as a loop: most requests stop at the first buckets
        bucket = 0
        while bucket < _BUCKET_COUNT:
            bound = _BUCKETS[bucket]
            if not bound < seconds:
                break
            bucket += 1
        hist[bucket] += 1
        hist[-1] += seconds
        hist = line.backend_hist
        hist[bucket] += 1
        hist[-1] += seconds

    def add_requests(self, key: tuple[str, str, str, bytes, int], count: int) -> None:
        """Count `count` more requests under `key` (summing workers)."""
        line = self._lines.get(key)
        if line is None:
            line = self._line(key)
        line.count += count

    def _line(self, key: tuple[str, str, str, bytes, int]) -> RequestLine:
        route, pool, backend, _, code = key
        dkey = (route, pool, _CODE_CLASS.get(code // 100, "other"))
        hist = self.durations.get(dkey)
        if hist is None:
            hist = self.durations[dkey] = [0.0] * (_BUCKET_COUNT + 2)
        bkey = (pool, backend)
        backend_hist = self.backend_durations.get(bkey)
        if backend_hist is None:
            backend_hist = self.backend_durations[bkey] = [0.0] * (_BUCKET_COUNT + 2)
        line = self._lines[key] = RequestLine(hist, backend_hist)
        return line

    def reject(self, listener: str, reason: str) -> None:
        key = (listener, reason)
        self.rejected[key] = self.rejected.get(key, 0) + 1

    def mirror(self, route: str, pool: str, result: str) -> None:
        key = (route, pool, result)
        self.mirrored[key] = self.mirrored.get(key, 0) + 1

    def snapshot(self) -> dict:
        """Plain data for summing across workers."""
        return {
            "requests": [[*k[:3], k[3].decode("latin-1"), k[4], v] for k, v in self.requests.items()],
            "durations": [[*k, v] for k, v in self.durations.items()],
            "backend_durations": [[*k, v] for k, v in self.backend_durations.items()],
            "rejected": [[*k, v] for k, v in self.rejected.items()],
            "mirrored": [[*k, v] for k, v in self.mirrored.items()],
            "connections": self.connections,
            "connection_limit_reached": self.connection_limit_reached,
            "reloads": self.reloads,
            "access_log": [self.access_log.lines, self.access_log.dropped],
        }


def merge_snapshots(snapshots: Iterable[dict]) -> Stats:
    """Sum the snapshots of several workers into one Stats."""
    total = Stats()
    for snap in snapshots:
        for route, pool, backend, method, code, value in snap["requests"]:
            total.add_requests((route, pool, backend, method.encode("latin-1"), code), value)
        for route, pool, code_class, hist in snap["durations"]:
            _add_into(total.durations, (route, pool, code_class), hist)
        for pool, backend, hist in snap["backend_durations"]:
            _add_into(total.backend_durations, (pool, backend), hist)
        for listener, reason, value in snap["rejected"]:
            total.rejected[(listener, reason)] = total.rejected.get((listener, reason), 0) + value
        for route, pool, result, value in snap["mirrored"]:
            total.mirrored[(route, pool, result)] = total.mirrored.get((route, pool, result), 0) + value
        lines, dropped = snap["access_log"]
        total.access_log.lines += lines
        total.access_log.dropped += dropped
        for name in ("connections", "connection_limit_reached", "reloads"):
            mine_d = getattr(total, name)
            for key, value in snap[name].items():
                mine_d[key] = mine_d.get(key, 0) + value
    return total


def _add_into(histograms: dict, key: tuple, hist: list[float]) -> None:
    mine = histograms.get(key)
    if mine is None:
        mine = histograms[key] = [0.0] * len(hist)
    for i, v in enumerate(hist):
        mine[i] += v


class BalancerCollector(Collector):
    """Turns Stats, pools and Consul watches into the metric families of docs/monitoring.md at scrape time."""

    def __init__(self, stats: Callable[[], Stats], pools: Callable[[], Iterable[Pool]],
                 consul: Callable[[], Iterable] = lambda: (),
                 instance: Callable[[], Any] | None = None,
                 certificates: Callable[[], Iterable] = lambda: ()) -> None:
        self._stats = stats
        self._pools = pools
        self._consul = consul
        self._instance = instance  # the App: start time and last reload
        self._certificates = certificates  # certificates.Expiry of the files in force

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if self._instance is not None:
            yield from _instance_families(self._instance())
        yield from self._request_families(stats)
        yield from self._backend_families(list(self._pools()))
        yield from self._consul_families()
        yield self._certificate_family()
        conns = GaugeMetricFamily("balancer_client_connections", "Open client connections.",
                                  labels=["listener"])
        for listener, value in stats.connections.items():
            conns.add_metric([listener], value)
        yield conns
        # Nothing is refused at the limit (new connections wait in the kernel backlog), so this
        # counts the times a listener reached it and stopped accepting.
        limit = CounterMetricFamily("balancer_client_connection_limit_reached",
                                    "Times a listener reached limits.max_connections and stopped "
                                    "accepting; new connections wait in the kernel backlog meanwhile.",
                                    labels=["listener"])
        for listener, value in stats.connection_limit_reached.items():
            limit.add_metric([listener], value)
        yield limit
        rejected = CounterMetricFamily("balancer_rejected_requests", "Requests refused by the balancer.",
                                       labels=["listener", "reason"])
        for (listener, reason), value in stats.rejected.items():
            rejected.add_metric([listener, reason], value)
        yield rejected
        mirrored = CounterMetricFamily("balancer_mirror_requests",
                                       "Copies of players' requests for a route's mirror pool: sent "
                                       "(answered, answer discarded), failed, or dropped (max_in_flight "
                                       "reached).", labels=["route", "pool", "result"])
        for (route, pool, result), value in stats.mirrored.items():
            mirrored.add_metric([route, pool, result], value)
        yield mirrored
        yield CounterMetricFamily("balancer_access_log_lines", "Access-log lines written.",
                                  value=stats.access_log.lines)
        yield CounterMetricFamily("balancer_access_log_dropped",
                                  "Access-log lines dropped: the sink could not keep up or failed.",
                                  value=stats.access_log.dropped)
        reloads = CounterMetricFamily("balancer_config_reloads", "Config reloads.", labels=["result"])
        for result, value in stats.reloads.items():
            reloads.add_metric([result], value)
        yield reloads

    @staticmethod
    def _request_families(stats: Stats) -> Iterator[Metric]:
        requests = CounterMetricFamily("balancer_requests", "Requests answered.",
                                       labels=["route", "pool", "backend", "method", "code"])
        for (route, pool, backend, method, code), value in stats.requests.items():
            requests.add_metric([route, pool, backend, method.decode("latin-1"), str(code)], value)
        yield requests
        durations = HistogramMetricFamily("balancer_request_duration_seconds",
                                          "Time from request head to response end.",
                                          labels=["route", "pool", "code_class"])
        for (route, pool, code_class), hist in stats.durations.items():
            cumulative = 0.0
            buckets = []
            for bound, count in zip(BUCKETS, hist):
                cumulative += count
                buckets.append((repr(bound), cumulative))
            cumulative += hist[len(BUCKETS)]
            buckets.append(("+Inf", cumulative))
            durations.add_metric([route, pool, code_class], buckets, hist[-1])
        yield durations

    @staticmethod
    def _backend_families(pools: list[Pool]) -> Iterator[Metric]:
        errors = CounterMetricFamily("balancer_upstream_errors", "Failures talking to backends.",
                                     labels=["pool", "backend", "kind"])
        retries = CounterMetricFamily("balancer_retries", "Requests retried on another backend.",
                                      labels=["pool"])
        stale = CounterMetricFamily(
            "balancer_stale_connection_retries",
            "Requests sent again on a fresh connection because a reused keep-alive connection "
            "closed before any answer (not counted as retries or backend failures).",
            labels=["pool"])
        up = GaugeMetricFamily("balancer_backend_up", "1 when the backend may take players.",
                               labels=["pool", "backend", "region"])
        state = GaugeMetricFamily("balancer_backend_state", "1 for the backend's current state.",
                                  labels=["pool", "backend", "state"])
        active = GaugeMetricFamily("balancer_backend_active_requests", "Requests in flight.",
                                   labels=["pool", "backend"])
        websockets = GaugeMetricFamily("balancer_backend_websockets", "Open WebSockets.",
                                       labels=["pool", "backend"])
        ejections = CounterMetricFamily("balancer_backend_ejections", "Outlier ejections.",
                                        labels=["pool", "backend"])
        checks = CounterMetricFamily("balancer_health_checks", "Active health check probes.",
                                     labels=["pool", "backend", "result"])
        panics = CounterMetricFamily("balancer_pool_panics",
                                     "Choices made in panic mode (max_ejected_percent reached).",
                                     labels=["pool"])
        eligible = GaugeMetricFamily("balancer_pool_eligible_backends",
                                     "Backends that may take a new player now (panic mode aside).",
                                     labels=["pool"])
        panic = GaugeMetricFamily("balancer_pool_panic_mode",
                                  "1 while the pool uses its ejected backends (max_ejected_percent reached).",
                                  labels=["pool"])
        now = time.monotonic()
        for pool in pools:
            retries.add_metric([pool.name], pool.retries_total)
            stale.add_metric([pool.name], pool.stale_retries_total)
            panics.add_metric([pool.name], pool.panics_total)
            count, panicking = pool.eligibility(now)
            eligible.add_metric([pool.name], count)
            panic.add_metric([pool.name], 1 if panicking else 0)
            for b in pool.backends.values():
                current = b.state(now)
                up.add_metric([pool.name, b.id, b.region or ""], 1 if current is BackendState.HEALTHY else 0)
                for s in BackendState:
                    state.add_metric([pool.name, b.id, s.value], 1 if s is current else 0)
                active.add_metric([pool.name, b.id], b.active_requests)
                websockets.add_metric([pool.name, b.id], b.websockets)
                ejections.add_metric([pool.name, b.id], b.ejections_total)
                for kind, value in b.upstream_errors.items():
                    errors.add_metric([pool.name, b.id, kind], value)
                for result, value in b.health_checks.items():
                    checks.add_metric([pool.name, b.id, result], value)
        yield from (errors, retries, stale, up, state, active, websockets, ejections, checks, panics,
                    eligible, panic)

    def _certificate_family(self) -> Metric:
        """Per certificate file in force: one of `listener`/`pool` names its owner (the other
        is empty), `name` which file of it (certificate, sni:<name>, client_ca, ca)."""
        expiry = GaugeMetricFamily(
            "balancer_certificate_expiry_timestamp_seconds",
            "When the first certificate in the file expires (Unix time).",
            labels=["listener", "pool", "name"])
        for cert in self._certificates():
            owner = [cert.owner_name, ""] if cert.owner == "listener" else ["", cert.owner_name]
            expiry.add_metric([*owner, cert.name], cert.not_after)
        return expiry

    def _consul_families(self) -> Iterator[Metric]:
        updates = CounterMetricFamily("balancer_consul_updates", "Consul blocking-query results.",
                                      labels=["service", "result"])
        last = GaugeMetricFamily("balancer_consul_last_success_timestamp_seconds",
                                 "Unix time of the last successful Consul answer.", labels=["service"])
        failing = GaugeMetricFamily("balancer_consul_watch_failing",
                                    "1 while the last Consul query for the service failed.",
                                    labels=["service"])
        # Several pools may watch one service (with different tags): one series per label set,
        # or Prometheus rejects the scrape. The oldest success is the one worth alerting on.
        counts: dict[tuple[str, str], int] = {}
        oldest: dict[str, float] = {}
        failing_services: dict[str, int] = {}
        for watch in self._consul():
            service = watch.service
            failing_services[service] = max(failing_services.get(service, 0), 1 if watch.failing else 0)
            for result, value in watch.updates.items():
                counts[(service, result)] = counts.get((service, result), 0) + value
            if watch.last_success is not None:
                oldest[service] = min(oldest.get(service, watch.last_success), watch.last_success)
        for (service, result), value in counts.items():
            updates.add_metric([service, result], value)
        for service, value in oldest.items():
            last.add_metric([service], value)
        for service, value in failing_services.items():
            failing.add_metric([service], value)
        yield updates
        yield last
        yield failing


def _instance_families(app: Any) -> Iterator[Metric]:
    from . import version  # the package's: this module is imported before it is complete

    info = GaugeMetricFamily("balancer_build_info", "Always 1; the version in a label.", labels=["version"])
    info.add_metric([version()], 1)
    started = GaugeMetricFamily("balancer_start_time_seconds", "Unix time the balancer started.")
    started.add_metric([], app.started_at)
    reload = app.last_reload
    ok = GaugeMetricFamily("balancer_config_last_reload_successful",
                           "1 unless the last reload was refused (the config in force is then older "
                           "than the file).")
    ok.add_metric([], 0 if reload is not None and reload.errors else 1)
    at = GaugeMetricFamily("balancer_config_last_reload_success_timestamp_seconds",
                           "Unix time the config in force was loaded (start or last good reload).")
    at.add_metric([], app.config_loaded_at)
    yield from (info, started, ok, at)
