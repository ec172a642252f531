"""A Consul HTTP API double: an aiohttp app on a loopback port chosen by the OS.

It implements the slice of the API the balancer uses, following Consul's documentation
(api-docs/health "List Service Instances for Service", api-docs/features/blocking, agent/service)
and, where the docs are silent, what the Consul agent's HTTP handlers do:

- `GET /v1/health/service/<name>` with `passing` (Go bool; present without a value = true),
  `tag` (repeatable, all must match, case-insensitive like Consul's tag filter), `dc`,
  `index` and `wait` (a Go duration: "30s", "500ms", "1m30s"). With an index > 0 the request
  blocks until the service's index passes it or `wait` (default 5m, at most 10m) plus a random
  extra of up to wait/16 elapses. A 200 always carries `X-Consul-Index`; errors do not (Consul
  sets the query meta only on success): 400 "Invalid wait time" / "Invalid index", 403 "ACL not
  found", 500 "No path to datacenter".
- `PUT /v1/agent/service/register` (optionally `?replace-existing-checks`), `PUT
  /v1/agent/service/deregister/<id>`, `PUT /v1/agent/service/maintenance/<id>`, `GET
  /v1/agent/services`. Registered HTTP checks are really probed every interval (first probe after
  a random stagger, start status critical, 2xx passing / 429 warning / else critical), as the
  agent does.
- ACLs: when built with `acl_token`, that token (X-Consul-Token, `Authorization: Bearer`, or
  `?token=`) may do everything; another token gets 403 "ACL not found"; no token is the anonymous
  token under default-deny: reads are filtered to nothing (with
  `X-Consul-Results-Filtered-By-ACLs: true`) and writes get 403 "Permission denied".

Indexes work like Consul's fine-grained service indexes: one raft index for the double, bumped
by every write; each service remembers the raft index of its last change; a service with no
instances answers the index at which the last service went extinct.

The Python control API (add/update/remove instances, check status, maintenance, outages, index
resets, request log) is for tests and changes state exactly as a write through Consul would.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
DEFAULT_WAIT = 300.0  # Consul's default blocking wait (5m)
MAX_WAIT = 600.0  # Consul caps wait at 10m
JITTER_FRACTION = 16  # Consul adds up to wait/16 so that many watchers don't wake together
ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"

_GO_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3,
             "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


class _BadRequest(Exception):
    """A query parameter Consul would refuse with 400 and this text."""


def parse_go_duration(text: str) -> float:
    """Seconds from a Go `time.ParseDuration` string, which is what Consul parses `wait` with."""
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(text)
    total, pos = 0.0, 0
    while pos < len(body):
        match = _GO_DURATION.match(body, pos)
        if match is None or match.group(1) in ("", "."):
            raise ValueError(text)
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def _go_bool(value: str) -> bool:
    # Consul's getBoolQueryParam: "?passing" with no value means true, else strconv.ParseBool.
    if value == "" or value in _GO_TRUE:
        return True
    if value in _GO_FALSE:
        return False
    raise _BadRequest(f"Invalid value for passing: {value}")


@dataclass
class FakeCheck:
    check_id: str
    name: str
    status: str = PASSING
    notes: str = ""
    output: str = ""
    service_id: str = ""
    service_name: str = ""
    type: str = ""
    http: str | None = None  # URL the double probes, for HTTP checks
    interval: float | None = None
    timeout: float = 10.0


@dataclass
class FakeNode:
    name: str
    address: str
    datacenter: str
    checks: dict[str, FakeCheck] = field(default_factory=dict)


@dataclass
class FakeInstance:
    id: str
    service: str
    node: str
    address: str
    port: int
    tags: list[str]
    meta: dict[str, str]
    weights: dict[str, int]
    checks: dict[str, FakeCheck]
    create_index: int
    modify_index: int


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    token: str | None
    at: float  # event-loop time

    def param(self, name: str) -> str | None:
        for key, value in self.query:
            if key == name:
                return value
        return None


class FakeConsul:
    """One Consul agent (and its cluster) in a test. `await start()`, `await close()`."""

    def __init__(
        self,
        *,
        datacenter: str = "dc1",
        acl_token: str | None = None,
        node: str = "fake-agent",
        node_address: str = "127.0.0.1",
        first_index: int = 10,
    ) -> None:
        self.datacenter = datacenter
        self.acl_token = acl_token
        self.agent_node = node
        self.requests: list[RecordedRequest] = []
        self.port = 0
        self._nodes: dict[str, FakeNode] = {}
        self._instances: dict[tuple[str, str], FakeInstance] = {}  # (node, service id)
        self._index = first_index
        self._service_index: dict[tuple[str, str], int] = {}  # (dc, service) -> raft index
        self._extinction_index = 0
        self._changed = asyncio.Event()
        self._generation = 0  # bumped by a snapshot restore: blocked queries are abandoned
        self._failure: tuple[int, str] | None = None
        # misbehave(): (how, path prefix, delay); hung requests wait for _released
        self._misbehaviour: tuple[str, str, float] | None = None
        self._released = asyncio.Event()
        self.hung = 0  # requests that got no answer (so far) because of misbehave("hang...")
        self._runner: web.AppRunner | None = None
        self._probe_session: aiohttp.ClientSession | None = None
        self._probes: dict[tuple[str, str], asyncio.Task[None]] = {}  # (service id, check id)
        self._add_node(node, node_address, datacenter)

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Listen on 127.0.0.1: a port chosen by the OS the first time, the same one after."""
        app = web.Application(middlewares=[self._misbehaving])
        app.router.add_get("/v1/health/service/{service:.+}", self._health_service)
        app.router.add_put("/v1/agent/service/register", self._agent_register)
        app.router.add_put("/v1/agent/service/deregister/{service_id:.+}", self._agent_deregister)
        app.router.add_put("/v1/agent/service/maintenance/{service_id:.+}", self._agent_maintenance)
        app.router.add_get("/v1/agent/services", self._agent_services)
        # A short shutdown timeout makes stop() look like a crash to clients in a blocking query.
        runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        self._runner = runner
        if self._probe_session is None:
            self._probe_session = aiohttp.ClientSession()

    async def stop(self) -> None:
        """Stop answering (connections refused); state is kept, as a restarted agent keeps it."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def close(self) -> None:
        await self.stop()
        for task in self._probes.values():
            task.cancel()
        if self._probes:
            await asyncio.wait(list(self._probes.values()))
        self._probes.clear()
        if self._probe_session is not None:
            await self._probe_session.close()
            self._probe_session = None

    # ---- control API: catalog --------------------------------------------------------------

    def add_instance(
        self,
        service: str,
        instance_id: str | None = None,
        *,
        address: str = "127.0.0.1",
        port: int = 8000,
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
        weights: Mapping[str, int] | None = None,
        node: str | None = None,
        node_address: str = "127.0.0.1",
        datacenter: str | None = None,
        status: str | None = PASSING,
    ) -> str:
        """Register an instance on its own node (or `node`); `status` is its service check's."""
        instance_id = instance_id or service
        node = node or f"node-{instance_id}"
        if node not in self._nodes:
            self._add_node(node, node_address, datacenter or self.datacenter)
        checks: dict[str, FakeCheck] = {}
        if status is not None:
            check_id = f"service:{instance_id}"
            checks[check_id] = FakeCheck(check_id, f"Service '{service}' check", status,
                                         service_id=instance_id, service_name=service, type="ttl")
        self._store(node, instance_id, service, address, port, tags, meta, weights, checks)
        return instance_id

    def update_instance(self, instance_id: str, *, node: str | None = None, **changes: Any) -> None:
        """Change address, port, tags, meta or weights of an instance."""
        inst = self._find(instance_id, node)
        for key, value in changes.items():
            if key not in ("address", "port", "tags", "meta", "weights"):
                raise TypeError(f"cannot change {key!r}")
            if key == "tags":
                value = list(value)
            elif key == "meta":
                value = dict(value)
            elif key == "weights":
                value = _weights(value)
            setattr(inst, key, value)
        self._touch(self._nodes[inst.node].datacenter, inst.service)
        inst.modify_index = self._index

    def remove_instance(self, instance_id: str, *, node: str | None = None) -> None:
        inst = self._find(instance_id, node)
        self._remove(inst)

    def set_check_status(
        self, instance_id: str, status: str, *, node: str | None = None, check_id: str | None = None
    ) -> None:
        inst = self._find(instance_id, node)
        check = inst.checks[check_id or f"service:{instance_id}"]
        self._set_status(inst, check, status)

    def set_maintenance(
        self, instance_id: str, enabled: bool = True, reason: str = "", *, node: str | None = None
    ) -> None:
        """Service maintenance mode: Consul adds a critical `_service_maintenance:<id>` check."""
        inst = self._find(instance_id, node)
        self._service_maintenance(inst, enabled, reason)

    def set_node_maintenance(self, node: str, enabled: bool = True, reason: str = "") -> None:
        """Node maintenance mode: a critical `_node_maintenance` check on every entry of the node."""
        target = self._nodes[node]
        if enabled:
            target.checks["_node_maintenance"] = FakeCheck(
                "_node_maintenance", "Node Maintenance Mode", CRITICAL,
                notes=reason or "Maintenance mode is enabled for this node", type="maintenance")
        else:
            target.checks.pop("_node_maintenance", None)
        for service in {i.service for i in self._instances.values() if i.node == node}:
            self._touch(target.datacenter, service)

    # ---- control API: faults ---------------------------------------------------------------

    def fail(self, status: int = 500, body: str = "No cluster leader") -> None:
        """Answer every request with this error (blocked queries too) until recover()."""
        self._failure = (status, body)
        self._wake()

    def misbehave(self, how: str, path: str = "/", delay: float = 0.0) -> None:
        """Faults other than an error status, for requests whose path starts with `path`,
        until recover():

        - `hang`: accept the request and never answer (a wedged agent);
        - `apply_and_hang`: do what was asked, then never answer (the answer is lost: a
          registration was made though the client never hears so);
        - `slow`: answer `delay` seconds late;
        - `garbage`: answer 200 with a body that is not JSON (a proxy's error page, a
          truncated answer), with an index header as a real answer has.
        """
        assert how in ("hang", "apply_and_hang", "slow", "garbage"), how
        self._misbehaviour = (how, path, delay)
        self._released.clear()
        self._wake()

    def recover(self) -> None:
        self._failure = None
        self._misbehaviour = None
        self._released.set()  # hung requests end (their clients have given up long ago)

    @web.middleware
    async def _misbehaving(self, request: web.Request, handler: Any) -> web.StreamResponse:
        fault = self._misbehaviour
        if fault is None or not request.path.startswith(fault[1]):
            return await handler(request)
        how, _, delay = fault
        if how == "garbage":
            self._record(request)
            return web.Response(status=200, text='[{"Node": {"Node": "x", "Addr',
                                content_type="application/json",
                                headers=self._query_meta(self._index + 1))
        if how == "slow":
            await asyncio.sleep(delay)
            return await handler(request)
        if how == "apply_and_hang":
            await handler(request)
        else:
            self._record(request)
        self.hung += 1
        await self._released.wait()
        raise web.HTTPServiceUnavailable(text="released")

    def reset_index(self, to: int = 1) -> None:
        """Indexes go backwards, as after restoring an older raft snapshot.

        Consul abandons every blocking query on a restore, so blocked queries answer at once
        with the (now lower) index.
        """
        self._index = to
        self._service_index = {key: min(value, to) for key, value in self._service_index.items()}
        self._extinction_index = min(self._extinction_index, to)
        self._generation += 1
        self._wake()

    def force_index(self, service: str, value: int, *, datacenter: str | None = None) -> None:
        """Make the service answer this index (e.g. 0, which buggy Consul versions have sent)."""
        self._service_index[(datacenter or self.datacenter, service)] = value
        self._wake()

    # ---- control API: observation ----------------------------------------------------------

    def health_requests(self, service: str) -> list[RecordedRequest]:
        path = f"/v1/health/service/{service}"
        return [r for r in self.requests if r.path == path]

    def request_count(self, path_prefix: str = "/") -> int:
        return sum(1 for r in self.requests if r.path.startswith(path_prefix))

    def agent_services(self) -> dict[str, dict[str, Any]]:
        return {i.id: self._agent_service_json(i) for i in self._instances.values()
                if i.node == self.agent_node}

    def check_status(self, instance_id: str, check_id: str | None = None,
                     *, node: str | None = None) -> str:
        inst = self._find(instance_id, node)
        return inst.checks[check_id or f"service:{instance_id}"].status

    # ---- HTTP: health ----------------------------------------------------------------------

    async def _health_service(self, request: web.Request) -> web.StreamResponse:
        token = self._record(request)
        if self._failure is not None:
            return self._failure_response()
        service = request.match_info["service"]
        try:
            passing = _go_bool(request.query["passing"]) if "passing" in request.query else False
            min_index, timeout = self._blocking_params(request)
        except _BadRequest as exc:
            return web.Response(status=400, text=str(exc))
        denied = self._acl_denied(token)
        if denied is not None:
            return denied
        dc = request.query.get("dc") or self.datacenter
        if dc not in self._datacenters():
            return web.Response(status=500, text="No path to datacenter")
        tags = [t.lower() for t in request.query.getall("tag", [])]

        if not await self._block(dc, service, min_index, timeout):
            return self._failure_response()
        entries = [self._entry_json(i) for i in self._matching(dc, service, tags, passing)]
        headers = self._query_meta(self._query_index(dc, service))
        if token is None and self.acl_token is not None:
            if entries:  # default deny: the anonymous token may read nothing
                headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
            entries = []
        return web.json_response(entries, headers=headers)

    def _blocking_params(self, request: web.Request) -> tuple[int, float]:
        wait = DEFAULT_WAIT
        if request.query.get("wait"):
            try:
                wait = parse_go_duration(request.query["wait"])
            except ValueError:
                raise _BadRequest("Invalid wait time") from None
        min_index = 0
        if request.query.get("index"):
            text = request.query["index"]
            if not text.isdigit():
                raise _BadRequest("Invalid index")
            min_index = int(text)
        if wait <= 0:
            wait = DEFAULT_WAIT
        wait = min(wait, MAX_WAIT)
        return min_index, wait + random.uniform(0, wait / JITTER_FRACTION)

    async def _block(self, dc: str, service: str, min_index: int, timeout: float) -> bool:
        """Wait until the service's index passes min_index; False if an outage began meanwhile."""
        if min_index == 0:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        generation = self._generation
        while True:
            if self._failure is not None:
                return False
            remaining = deadline - loop.time()
            if (self._query_index(dc, service) > min_index or remaining <= 0
                    or generation != self._generation):
                return True
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def _matching(self, dc: str, service: str, tags: list[str], passing: bool) -> list[FakeInstance]:
        found = []
        for inst in self._instances.values():
            node = self._nodes[inst.node]
            if inst.service != service or node.datacenter != dc:
                continue
            have = {t.lower() for t in inst.tags}
            if any(t not in have for t in tags):
                continue
            if passing and any(c.status != PASSING for c in self._all_checks(inst)):
                continue
            found.append(inst)
        return sorted(found, key=lambda i: (i.node, i.id))

    # ---- HTTP: agent -----------------------------------------------------------------------

    async def _agent_register(self, request: web.Request) -> web.StreamResponse:
        token = self._record(request)
        if self._failure is not None:
            return self._failure_response()
        try:
            body = _lower_keys(await request.json())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.Response(status=400, text="Request decode failed")
        if not isinstance(body, dict) or not body.get("name"):
            return web.Response(status=400, text="Missing service name")
        name = body["name"]
        denied = self._acl_denied(token, write=name)
        if denied is not None:
            return denied
        service_id = body.get("id") or name
        try:
            replace = _go_bool(request.query.get("replace-existing-checks", "false"))
        except _BadRequest:
            return web.Response(status=400, text="Invalid value for replace-existing-checks")
        old = self._instances.get((self.agent_node, service_id))
        checks = dict(old.checks) if old is not None and not replace else {}
        for check in self._checks_from_definition(body, service_id, name):
            checks[check.check_id] = check
        self._stop_probes(service_id)
        inst = self._store(self.agent_node, service_id, name, body.get("address") or "",
                           int(body.get("port") or 0), body.get("tags") or (), body.get("meta"),
                           body.get("weights"), checks)
        for check in inst.checks.values():
            if check.http and check.interval:
                self._start_probe(inst, check)
        return web.Response(status=200)

    def _agent_service_call(
        self, request: web.Request,
    ) -> tuple[str, FakeInstance | None, web.Response | None]:
        """What /v1/agent/service/<verb>/<id> calls do first: record the call, fail if told to,
        find the agent's instance and check that the token may write its service. Returns the
        service id, the instance (None if unknown) and the refusal to answer with, if any."""
        token = self._record(request)
        service_id = request.match_info["service_id"]
        if self._failure is not None:
            return service_id, None, self._failure_response()
        inst = self._instances.get((self.agent_node, service_id))
        return service_id, inst, self._acl_denied(token, write=inst.service if inst else service_id)

    async def _agent_deregister(self, request: web.Request) -> web.StreamResponse:
        service_id, inst, refused = self._agent_service_call(request)
        if refused is not None:
            return refused
        if inst is None:
            return web.Response(status=404, text=f'Unknown service ID "{service_id}". '
                                "Ensure that the service ID is passed, not the service name.")
        self._remove(inst)
        return web.Response(status=200)

    async def _agent_maintenance(self, request: web.Request) -> web.StreamResponse:
        service_id, inst, refused = self._agent_service_call(request)
        if refused is not None:
            return refused
        if "enable" not in request.query:
            return web.Response(status=400, text="Missing value for enable")
        try:
            enabled = _go_bool(request.query["enable"])
        except _BadRequest:
            return web.Response(status=400, text="Invalid value for enable")
        if inst is None:
            return web.Response(status=404, text=f'Unknown service ID "{service_id}"')
        self._service_maintenance(inst, enabled, request.query.get("reason", ""))
        return web.Response(status=200)

    async def _agent_services(self, request: web.Request) -> web.StreamResponse:
        token = self._record(request)
        if self._failure is not None:
            return self._failure_response()
        denied = self._acl_denied(token)
        if denied is not None:
            return denied
        services = {} if token is None and self.acl_token is not None else self.agent_services()
        return web.json_response(services)

    def _checks_from_definition(
        self, body: dict[str, Any], service_id: str, name: str
    ) -> list[FakeCheck]:
        definitions = list(body.get("checks") or [])
        if body.get("check"):
            definitions.insert(0, body["check"])
        checks = []
        for n, definition in enumerate(definitions, start=1):
            definition = _lower_keys(definition)
            default_id = f"service:{service_id}"
            if len(definitions) > 1:
                default_id += f":{n}"
            interval = definition.get("interval")
            timeout = definition.get("timeout")
            checks.append(FakeCheck(
                check_id=definition.get("checkid") or definition.get("id") or default_id,
                name=definition.get("name") or f"Service '{name}' check",
                # Consul starts a new check critical unless its definition says otherwise.
                status=definition.get("status") or CRITICAL,
                notes=definition.get("notes") or "",
                service_id=service_id,
                service_name=name,
                type="http" if definition.get("http") else ("ttl" if definition.get("ttl") else ""),
                http=definition.get("http"),
                interval=parse_go_duration(interval) if isinstance(interval, str) else interval,
                timeout=parse_go_duration(timeout) if isinstance(timeout, str) else (timeout or 10.0),
            ))
        return checks

    # ---- HTTP checks, as the agent runs them -----------------------------------------------

    def _start_probe(self, inst: FakeInstance, check: FakeCheck) -> None:
        key = (inst.id, check.check_id)
        self._probes[key] = asyncio.create_task(self._probe_loop(inst.id, check))

    def _stop_probes(self, service_id: str) -> None:
        for key in [k for k in self._probes if k[0] == service_id]:
            self._probes.pop(key).cancel()

    async def _probe_loop(self, service_id: str, check: FakeCheck) -> None:
        assert check.http is not None and check.interval is not None
        # The agent staggers the first run randomly within one interval.
        await asyncio.sleep(random.uniform(0, check.interval))
        while True:
            if self.running and self._probe_session is not None:
                status, output = await self._probe(check)
                inst = self._instances.get((self.agent_node, service_id))
                if inst is None:
                    return
                check.output = output
                self._set_status(inst, check, status)
            await asyncio.sleep(check.interval)

    async def _probe(self, check: FakeCheck) -> tuple[str, str]:
        assert self._probe_session is not None and check.http is not None
        try:
            timeout = aiohttp.ClientTimeout(total=check.timeout)
            async with self._probe_session.get(check.http, timeout=timeout) as resp:
                await resp.read()
                output = f"HTTP GET {check.http}: {resp.status} {resp.reason}"
                if 200 <= resp.status < 300:
                    return PASSING, output
                return (WARNING if resp.status == 429 else CRITICAL), output
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return CRITICAL, f"Get {check.http!r}: {exc!r}"

    # ---- state helpers ---------------------------------------------------------------------

    def _add_node(self, name: str, address: str, datacenter: str) -> None:
        node = FakeNode(name, address, datacenter)
        node.checks["serfHealth"] = FakeCheck("serfHealth", "Serf Health Status", PASSING,
                                              output="Agent alive and reachable")
        self._nodes[name] = node

    def _store(
        self,
        node: str,
        instance_id: str,
        service: str,
        address: str,
        port: int,
        tags: Iterable[str],
        meta: Mapping[str, str] | None,
        weights: Mapping[str, int] | None,
        checks: dict[str, FakeCheck],
    ) -> FakeInstance:
        key = (node, instance_id)
        old = self._instances.get(key)
        if old is not None and old.service != service:
            self._remove(old)
            old = None
        self._touch(self._nodes[node].datacenter, service)
        inst = FakeInstance(
            id=instance_id, service=service, node=node, address=address, port=port,
            tags=list(tags), meta=dict(meta or {}),
            weights=_weights(weights), checks=checks,
            create_index=old.create_index if old is not None else self._index,
            modify_index=self._index,
        )
        self._instances[key] = inst
        return inst

    def _remove(self, inst: FakeInstance) -> None:
        del self._instances[(inst.node, inst.id)]
        if inst.node == self.agent_node:
            self._stop_probes(inst.id)
        dc = self._nodes[inst.node].datacenter
        self._touch(dc, inst.service)
        if not any(i.service == inst.service and self._nodes[i.node].datacenter == dc
                   for i in self._instances.values()):
            self._extinction_index = self._index

    def _find(self, instance_id: str, node: str | None) -> FakeInstance:
        found = [i for i in self._instances.values()
                 if i.id == instance_id and (node is None or i.node == node)]
        if len(found) != 1:
            raise KeyError(f"{len(found)} instances with id {instance_id!r}; pass node=")
        return found[0]

    def _set_status(self, inst: FakeInstance, check: FakeCheck, status: str) -> None:
        if check.status == status:
            return  # the agent only writes status changes to the catalog
        check.status = status
        self._touch(self._nodes[inst.node].datacenter, inst.service)

    def _service_maintenance(self, inst: FakeInstance, enabled: bool, reason: str) -> None:
        check_id = f"_service_maintenance:{inst.id}"
        if enabled:
            inst.checks[check_id] = FakeCheck(
                check_id, "Service Maintenance Mode", CRITICAL,
                notes=reason or "Maintenance mode is enabled for this service",
                service_id=inst.id, service_name=inst.service, type="maintenance")
        elif inst.checks.pop(check_id, None) is None:
            return
        self._touch(self._nodes[inst.node].datacenter, inst.service)

    def _touch(self, dc: str, service: str) -> None:
        """A raft write affecting `service`: a new index, and blocked queries re-evaluate."""
        self._index += 1
        self._service_index[(dc, service)] = self._index
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _query_index(self, dc: str, service: str) -> int:
        exists = any(i.service == service and self._nodes[i.node].datacenter == dc
                     for i in self._instances.values())
        if not exists and self._extinction_index:
            return self._extinction_index
        return self._service_index.get((dc, service), self._index)

    def _datacenters(self) -> set[str]:
        return {n.datacenter for n in self._nodes.values()}

    def _all_checks(self, inst: FakeInstance) -> list[FakeCheck]:
        return list(self._nodes[inst.node].checks.values()) + list(inst.checks.values())

    # ---- HTTP helpers ----------------------------------------------------------------------

    def _record(self, request: web.Request) -> str | None:
        token = request.headers.get("X-Consul-Token")
        auth = request.headers.get("Authorization", "")
        if token is None and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        if token is None:
            token = request.query.get("token")
        self.requests.append(RecordedRequest(
            request.method, request.path, tuple(request.query.items()), token or None,
            asyncio.get_running_loop().time()))
        return token or None

    def _acl_denied(self, token: str | None, write: str | None = None) -> web.Response | None:
        """403 for a token Consul does not know, or for a write (to service `write`) by anonymous."""
        if self.acl_token is None:
            return None
        if token is not None and token != self.acl_token:
            return web.Response(status=403, text="ACL not found")
        if token is None and write is not None:
            return web.Response(
                status=403,
                text=f"Permission denied: token with AccessorID '{ANONYMOUS_ACCESSOR}' "
                     f"lacks permission 'service:write' on \"{write}\"")
        return None

    def _failure_response(self) -> web.Response:
        assert self._failure is not None
        status, body = self._failure
        return web.Response(status=status, text=body)

    @staticmethod
    def _query_meta(index: int) -> dict[str, str]:
        return {
            "X-Consul-Index": str(index),
            "X-Consul-Knownleader": "true",
            "X-Consul-Lastcontact": "0",
            "X-Consul-Effective-Consistency": "leader",
        }

    def _entry_json(self, inst: FakeInstance) -> dict[str, Any]:
        node = self._nodes[inst.node]
        return {
            "Node": {
                "ID": "", "Node": node.name, "Address": node.address, "Datacenter": node.datacenter,
                "TaggedAddresses": {"lan": node.address, "wan": node.address}, "Meta": {},
            },
            "Service": {
                "ID": inst.id, "Service": inst.service, "Tags": list(inst.tags),
                "Address": inst.address, "Meta": dict(inst.meta), "Port": inst.port,
                "Weights": dict(inst.weights), "EnableTagOverride": False, "Kind": "",
                "CreateIndex": inst.create_index, "ModifyIndex": inst.modify_index,
            },
            "Checks": [self._check_json(node, inst, c) for c in self._all_checks(inst)],
        }

    @staticmethod
    def _check_json(node: FakeNode, inst: FakeInstance, check: FakeCheck) -> dict[str, Any]:
        return {
            "Node": node.name, "CheckID": check.check_id, "Name": check.name,
            "Status": check.status, "Notes": check.notes, "Output": check.output,
            "ServiceID": check.service_id, "ServiceName": check.service_name,
            "ServiceTags": list(inst.tags) if check.service_id else [], "Type": check.type,
        }

    def _agent_service_json(self, inst: FakeInstance) -> dict[str, Any]:
        return {
            "ID": inst.id, "Service": inst.service, "Tags": list(inst.tags), "Meta": dict(inst.meta),
            "Port": inst.port, "Address": inst.address, "Weights": dict(inst.weights),
            "EnableTagOverride": False, "Datacenter": self._nodes[inst.node].datacenter,
        }


def _weights(weights: Mapping[str, int] | None) -> dict[str, int]:
    # Consul's default when a registration gives none; keys normalised like Go's decoder does.
    given = _lower_keys(dict(weights or {}))
    return {"Passing": int(given.get("passing", 1)), "Warning": int(given.get("warning", 1))}


def _lower_keys(value: Any) -> Any:
    """Consul decodes JSON into Go structs, whose field matching ignores case."""
    if isinstance(value, dict):
        return {str(k).lower(): v for k, v in value.items()}
    return value
