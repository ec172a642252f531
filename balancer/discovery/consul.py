"""Consul discovery: blocking queries on /v1/health/service/<name> -> pool backend updates.

`ConsulWatch` keeps one pool's discovered backends in step with Consul's catalog (docs/operations.md, "Consul"):
it long-polls `/v1/health/service/<service>?passing` following the "Implementation Details" of
Consul's blocking-query docs, turns the entries into `BackendConfig`s and hands a new list to
`on_change` whenever the set changes. When Consul fails it keeps the last known set (it never
delivers an empty list because of an error), backs off with jitter, and logs the outage once and
the recovery once.

`ConsulRegistration` registers this balancer instance in Consul, with an HTTP check on the admin
listener, and deregisters it on exit.

Both talk to Consul's HTTP API with aiohttp directly rather than through py-consul's
`consul.aio`: py-consul hides every response header but X-Consul-Index (the watcher needs
X-Consul-Results-Filtered-By-ACLs), takes its token from CONSUL_HTTP_TOKEN even when another
`token_env` is configured, has no per-request timeout, and builds its connector with
parameters aiohttp deprecates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from balancer.config import Address, BackendConfig, ConsulConfig, ConsulDiscoveryConfig

log = logging.getLogger("balancer.consul")

# Consul's docs ask clients to rate limit the blocking loop with a token bucket so that a result
# that churns (or a misbehaving server that answers at once) degrades into polling instead of a
# busy loop, while a few quick successive changes still go through without delay. The docs'
# example is a burst of 2 and a query every ~15 s; a load balancer wants backend changes sooner,
# and one query a second per watched service is still negligible load for a Consul agent.
QUERY_BURST = 5
QUERY_REFILL_INTERVAL = 1.0  # seconds per token once the burst is spent

BACKOFF_INITIAL = 0.1  # first retry delay after an error
BACKOFF_MAX = 30.0  # never wait longer than this between retries, whatever `wait` is
CONNECT_TIMEOUT = 5.0
# Consul answers a blocking query within wait + wait/16; past that plus this slack the
# connection is presumed dead (a half-open TCP connection would otherwise hang forever).
ANSWER_SLACK = 5.0
REGISTRATION_TIMEOUT = 10.0

if TYPE_CHECKING:
    import aiohttp

OnChange = Callable[[list[BackendConfig]], None]


class ConsulError(Exception):
    """Consul answered, but not with something usable (error status, bad body)."""


@dataclass(frozen=True, slots=True)
class HealthAnswer:
    index: int  # X-Consul-Index, 0 when missing or unparsable
    entries: list[Any]
    filtered_by_acls: bool


def next_index(previous: int, returned: int) -> int:
    """The index for the next blocking query, per Consul's blocking-query implementation notes."""
    if returned < 1:
        # Index 0 would make the next query return at once: a busy loop. 1 is always safe.
        return 1
    if returned < previous:
        # Indexes went backwards (snapshot restore, Consul upgrade): restart the blocking loop
        # with a non-blocking read, or updates could be missed for an unbounded time.
        return 0
    return returned


def consul_base_url(consul: ConsulConfig) -> str:
    address = consul.address.rstrip("/")
    return address if "://" in address else f"http://{address}"


def consul_headers(consul: ConsulConfig) -> dict[str, str]:
    token = os.environ.get(consul.token_env)
    return {"X-Consul-Token": token} if token else {}


def go_duration(seconds: float) -> str:
    """A duration Consul parses (Go's time.ParseDuration); whole milliseconds avoid float text."""
    return f"{max(1, round(seconds * 1000))}ms"


# ---- entries -> backends (pure) ----------------------------------------------------------------


def entries_to_backends(
    entries: list[Any], discovery: ConsulDiscoveryConfig
) -> tuple[list[BackendConfig], list[str]]:
    """Backends from health entries, sorted by id, and a problem text for each entry skipped."""
    problems: list[str] = []
    ids = Counter(_service(e).get("ID") for e in entries)
    backends: dict[str, BackendConfig] = {}
    for entry in entries:
        service = _service(entry)
        node = entry.get("Node") if isinstance(entry, dict) else None
        node = node if isinstance(node, dict) else {}
        backend_id = str(service.get("ID") or "")
        if not backend_id:
            problems.append(f"entry without Service.ID on node {node.get('Node')!r}")
            continue
        if ids[backend_id] > 1:
            # Service IDs are unique per agent only; the same ID on two nodes is two backends.
            backend_id = f"{backend_id}@{node.get('Node', '')}"
        host = service.get("Address") or node.get("Address") or ""
        port = service.get("Port")
        if not host or not isinstance(port, int) or not 0 < port < 65536:
            problems.append(f"{backend_id}: no usable address ({host!r}, port {port!r})")
            continue
        backends[backend_id] = BackendConfig(
            id=backend_id,
            address=Address(str(host), port),
            region=_region(service, discovery.region_from),
            weight=_weight(service, discovery.weight_from),
            source="consul",
        )
    return [backends[k] for k in sorted(backends)], problems


def _service(entry: Any) -> dict[str, Any]:
    service = entry.get("Service") if isinstance(entry, dict) else None
    return service if isinstance(service, dict) else {}


def _region(service: dict[str, Any], region_from: str | None) -> str | None:
    if not region_from:
        return None
    kind, _, key = region_from.partition(":")
    if kind == "meta":
        value = (service.get("Meta") or {}).get(key)
        return str(value) if value else None
    if kind == "tag":
        for tag in service.get("Tags") or ():
            if isinstance(tag, str) and tag.startswith(key) and len(tag) > len(key):
                return tag[len(key):]
    return None


def _weight(service: dict[str, Any], weight_from: str | None) -> int:
    if weight_from != "weights":
        return 1
    passing = (service.get("Weights") or {}).get("Passing", 1)
    return max(1, passing) if isinstance(passing, int) else 1


# ---- rate limit and back-off -------------------------------------------------------------------


class TokenBucket:
    """`burst` queries at once, then one per `refill_interval` seconds."""

    def __init__(self, burst: int, refill_interval: float) -> None:
        self._burst = burst
        self._refill_interval = refill_interval
        self._tokens = float(burst)
        self._updated = time.monotonic()

    def take(self) -> float:
        """Take a token; returns how long to sleep before using it (0 in the happy case)."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) / self._refill_interval)
        self._updated = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens * self._refill_interval


def backoff_delay(failures: int, cap: float) -> float:
    """Exponential back-off with jitter: half fixed so it really grows, half random to spread."""
    delay = min(cap, BACKOFF_INITIAL * 2 ** (failures - 1))
    return random.uniform(delay / 2, delay)


# ---- the watch -----------------------------------------------------------------------------------


class ConsulWatch:
    """Watches one Consul service for one pool; delivers backend sets to `on_change`.

    `updates` counts query results: "success" (an answer that changed the set, or the first
    one), "unchanged" (an answer with the same set, e.g. a blocking query that timed out) and
    "error". `last_success` is the unix time of the last good answer. `consul_config` and
    `discovery` are kept so an owner can tell whether a reload changed what is watched.
    """

    def __init__(
        self,
        consul: ConsulConfig,
        pool_name: str,
        discovery: ConsulDiscoveryConfig,
        on_change: OnChange,
        *,
        burst: int = QUERY_BURST,
        refill_interval: float = QUERY_REFILL_INTERVAL,
    ) -> None:
        self.consul_config = consul
        self.pool_name = pool_name
        self.discovery = discovery
        self.on_change = on_change
        self.updates: dict[str, int] = {"success": 0, "unchanged": 0, "error": 0}
        self.last_success: float | None = None
        self._bucket = TokenBucket(burst, refill_interval)
        self._url = f"{consul_base_url(consul)}/v1/health/service/{quote(discovery.service, safe='')}"
        self._delivered: frozenset[BackendConfig] | None = None
        self._known: list[BackendConfig] = []
        self._failures = 0
        self._failing_since = 0.0
        self._reported: set[str] = set()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def service(self) -> str:
        """The watched Consul service (the `service` label of the consul metrics)."""
        return self.discovery.service

    @property
    def failing(self) -> bool:
        """True while the last query failed (Consul unreachable or answering errors)."""
        return self._failures > 0

    @property
    def failures(self) -> int:
        """Consecutive failed queries (0 while Consul answers)."""
        return self._failures

    @property
    def outage_since(self) -> float | None:
        """Unix time of the first failed query of the current outage, None while answering."""
        if not self._failures:
            return None
        return time.time() - (time.monotonic() - self._failing_since)

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"consul watch for pool {self.pool_name!r} already started")
        import aiohttp  # here: a balancer without Consul never needs its ~10 MiB

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT))
        self._task = asyncio.create_task(self._run(), name=f"consul-watch:{self.pool_name}")
        log.info("consul: watching service %r for pool %r at %s",
                 self.discovery.service, self.pool_name, consul_base_url(self.consul_config))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _run(self) -> None:
        index = 0
        while True:
            delay = self._bucket.take()
            if delay:
                await asyncio.sleep(delay)
            try:
                answer = await self._query(index)
                backends, problems = entries_to_backends(answer.entries, self.discovery)
            except Exception as exc:  # noqa: BLE001 - the watch must outlive any bad answer
                self._record_failure(exc)
                await asyncio.sleep(backoff_delay(self._failures, self._backoff_cap()))
                continue
            self._record_success(backends, problems)
            index = next_index(index, answer.index)

    async def _query(self, index: int) -> HealthAnswer:
        assert self._session is not None
        params: list[tuple[str, str]] = [("passing", "")]
        params += [("tag", tag) for tag in self.discovery.tags]
        if self.consul_config.datacenter:
            params.append(("dc", self.consul_config.datacenter))
        if index > 0:  # index 0 means "answer now", so no wait either
            params += [("index", str(index)), ("wait", go_duration(self.consul_config.wait))]
        import aiohttp

        wait = self.consul_config.wait
        timeout = aiohttp.ClientTimeout(
            total=wait + wait / 16 + ANSWER_SLACK, sock_connect=CONNECT_TIMEOUT)
        headers = consul_headers(self.consul_config)
        async with self._session.get(self._url, params=params, headers=headers,
                                     timeout=timeout) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise ConsulError(f"HTTP {resp.status}: {body.strip()[:200]}")
            answer = HealthAnswer(
                index=_parse_index(resp.headers.get("X-Consul-Index")),
                entries=_parse_entries(body),
                filtered_by_acls=resp.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true",
            )
        if answer.filtered_by_acls and not answer.entries:
            # An ACL token that cannot read the service sees an empty service. Delivering that
            # would drain every discovered backend because of a policy mistake.
            raise ConsulError("every instance was filtered out by ACLs: the token lacks service:read"
                              f" or node:read for {self.discovery.service!r}")
        if answer.index < 1:
            self._report_once("no-index", "consul: answer for %r without a usable X-Consul-Index",
                              self.discovery.service)
        return answer

    def _backoff_cap(self) -> float:
        return min(BACKOFF_MAX, max(1.0, self.consul_config.wait))

    def _record_failure(self, exc: Exception) -> None:
        self.updates["error"] += 1
        self._failures += 1
        reason = str(exc) or type(exc).__name__
        if self._failures == 1:
            self._failing_since = time.monotonic()
            log.warning("consul: query for service %r (pool %r) failed: %s; keeping the %d last "
                        "known backends, retrying with back-off", self.discovery.service,
                        self.pool_name, reason, len(self._known))
        else:
            log.debug("consul: query for service %r failed again (%d): %s",
                      self.discovery.service, self._failures, reason)

    def _record_success(self, backends: list[BackendConfig], problems: list[str]) -> None:
        self.last_success = time.time()
        if self._failures:
            log.info("consul: service %r (pool %r) reachable again after %d failed queries "
                     "over %.1fs", self.discovery.service, self.pool_name, self._failures,
                     time.monotonic() - self._failing_since)
            self._failures = 0
        for problem in problems:
            self._report_once(problem, "consul: skipping an instance of %r: %s",
                              self.discovery.service, problem)
        current = frozenset(backends)
        if current == self._delivered:
            self.updates["unchanged"] += 1
            return
        self.updates["success"] += 1
        self._known = backends
        try:
            self.on_change(list(backends))
        except Exception:
            # Not remembered as delivered, so the next answer tries again.
            log.exception("consul: applying %d backends to pool %r failed",
                          len(backends), self.pool_name)
            return
        self._delivered = current

    def _report_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._reported:
            self._reported.add(key)
            log.warning(message, *args)


def _parse_index(value: str | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def _parse_entries(body: str) -> list[Any]:
    try:
        entries = json.loads(body)
    except ValueError as exc:
        raise ConsulError(f"answer is not JSON: {exc}") from None
    if not isinstance(entries, list):
        raise ConsulError(f"answer is a JSON {type(entries).__name__}, not a list")
    return entries


# ---- self-registration ---------------------------------------------------------------------------


class ConsulRegistration:
    """Registers this balancer instance as a Consul service with an HTTP check on its admin
    listener, and deregisters it on exit.

    The service ID is `<service>-<hostname>-<port>`: unique per instance, and stable across
    restarts, so a crashed instance's leftover entry is replaced when it comes back instead
    of piling up (no DeregisterCriticalServiceAfter, which would also remove an instance that
    is only briefly failing and never put it back).
    """

    def __init__(self, consul: ConsulConfig) -> None:
        if consul.register is None:
            raise ValueError("consul.register is not configured")
        self.consul_config = consul
        self.register_config = consul.register
        self.service_id: str | None = None

    async def register(self, address: str, port: int, admin_url: str) -> None:
        """Register `address:port` (the public listener); Consul checks `admin_url` + check path.

        A wildcard bind address (0.0.0.0, ::) is sent as empty, which makes Consul use the
        agent's node address: a wildcard is not an address anyone can connect to.
        """
        service = self.register_config.service
        service_id = f"{service}-{socket.gethostname()}-{port}"
        check = self.register_config.check
        payload = {
            "ID": service_id,
            "Name": service,
            "Address": "" if address in ("", "0.0.0.0", "::", "[::]") else address,
            "Port": port,
            "Check": {
                "Name": f"{service} admin health",
                "HTTP": admin_url.rstrip("/") + check.http,
                "Interval": go_duration(check.interval),
                "Timeout": go_duration(min(check.interval, 10.0)),
            },
        }
        # Known before it is asked for: if the answer never comes (Consul hangs, or the
        # instance is stopped meanwhile), Consul may still have taken it, so deregister
        # tries (one that was never made answers 404, which counts as removed).
        self.service_id = service_id
        # replace-existing-checks: a changed check path replaces the old check, not adds to it.
        await self._put("/v1/agent/service/register?replace-existing-checks=true", payload)
        log.info("consul: registered %r as %r", service, service_id)

    async def register_retrying(self, address: str, port: int, admin_url: str) -> None:
        """`register`, retried with back-off until Consul takes it: a Consul that was down when
        this instance started must not leave it unfindable until its next restart."""
        failures = 0
        while True:
            failures += 1
            await asyncio.sleep(backoff_delay(failures, BACKOFF_MAX))
            try:
                await self.register(address, port, admin_url)
                return
            except Exception as exc:  # noqa: BLE001 - keep trying whatever Consul answers
                log.debug("consul: registration of %r failed again (%d): %s",
                          self.register_config.service, failures, exc)

    async def deregister(self) -> None:
        """Remove the registration; one already gone (404) counts as removed."""
        if self.service_id is None:
            return
        service_id = self.service_id
        status = await self._put(f"/v1/agent/service/deregister/{quote(service_id, safe='')}",
                                 None, allow_404=True)
        self.service_id = None
        log.info("consul: deregistered %r%s", service_id,
                 " (was already gone)" if status == 404 else "")

    async def _put(self, path: str, payload: dict[str, Any] | None, allow_404: bool = False) -> int:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=REGISTRATION_TIMEOUT, sock_connect=CONNECT_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.put(consul_base_url(self.consul_config) + path, json=payload,
                                   headers=consul_headers(self.consul_config)) as resp:
                body = await resp.text()
                if resp.status == 200 or (allow_404 and resp.status == 404):
                    return resp.status
                raise ConsulError(f"PUT {path.split('?')[0]}: HTTP {resp.status}: {body.strip()[:200]}")
