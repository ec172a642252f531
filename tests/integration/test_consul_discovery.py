"""ConsulWatch and ConsulRegistration against the Consul double (tests/fakes/consul.py) on a
loopback port chosen by the OS, plus one test against a real Consul when CONSUL_HTTP_ADDR is set.

Blocking waits are short (1 s) so that timeouts, back-off caps and recoveries fit in a few seconds.
Waits for a delivery are hang guards, not speed bounds: that a change is delivered *because*
the blocking query was woken is shown with a blocking wait far longer than the guard. Run with
-s to see the measured catalog-change -> delivery latencies.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from balancer.config import (
    Address, BackendConfig, ConsulCheck, ConsulConfig, ConsulDiscoveryConfig, ConsulRegister,
)
from balancer.discovery.consul import ConsulRegistration, ConsulWatch
from tests.fakes.consul import CRITICAL, PASSING, WARNING, FakeConsul
from tests.waiting import HANG_GUARD, until

WAIT = 1.0
# A blocking wait no test ever sees run out: a change delivered within HANG_GUARD can only
# have come from the blocked query being woken by it.
LONG_WAIT = 10 * HANG_GUARD
SERVICE = "live-games"


@dataclass
class Deliveries:
    """What on_change received, with arrival times; next() hands them out in order, once each."""

    sets: list[list[BackendConfig]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    consumed: int = 0
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, backends: list[BackendConfig]) -> None:
        self.sets.append(backends)
        self.times.append(time.monotonic())
        self._arrived.set()

    async def next(self, timeout: float = HANG_GUARD) -> list[BackendConfig]:
        """The oldest delivery not yet returned, waiting up to `timeout` for one to arrive."""
        deadline = time.monotonic() + timeout
        while len(self.sets) <= self.consumed:
            self._arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no delivery within {timeout}s")
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        self.consumed += 1
        return self.sets[self.consumed - 1]


@pytest.fixture
async def watch(consul: FakeConsul) -> AsyncIterator[Callable[..., object]]:
    """Starts ConsulWatch objects against the double and stops them at the end of the test."""
    started: list[ConsulWatch] = []

    async def start(
        *, wait: float = WAIT, token_env: str = "TEST_CONSUL_TOKEN", datacenter: str | None = None,
        address: str | None = None, **discovery: object,
    ) -> tuple[ConsulWatch, Deliveries]:
        deliveries = Deliveries()
        config = ConsulConfig(address=address or consul.address, token_env=token_env,
                              datacenter=datacenter, wait=wait)
        discovery.setdefault("service", SERVICE)
        w = ConsulWatch(config, "pool", ConsulDiscoveryConfig(**discovery),  # type: ignore[arg-type]
                        deliveries)
        started.append(w)
        await w.start()
        return w, deliveries

    yield start
    for w in started:
        await w.stop()


async def blocked(consul: FakeConsul) -> None:
    """Until the watcher's latest query carries an index, i.e. is blocked waiting for a change."""
    def latest_blocks() -> bool:
        asked = consul.health_requests(SERVICE)
        return bool(asked) and asked[-1].param("index") is not None

    await until(latest_blocks, "the watcher blocked in a query")


async def latency(consul: FakeConsul, deliveries: Deliveries, change: Callable[[], None],
                  what: str) -> list[BackendConfig]:
    """The delivery a change causes. Started with `wait=LONG_WAIT`, the watcher can only
    deliver it within the guard if the change woke its blocked query."""
    await blocked(consul)
    queries = len(consul.health_requests(SERVICE))
    t0 = time.monotonic()
    change()
    backends = await deliveries.next()
    took = deliveries.times[deliveries.consumed - 1] - t0
    print(f"consul {what} -> delivery: {took * 1000:.1f} ms")
    # Answered by the query that was blocked, not by a new one.
    assert len(consul.health_requests(SERVICE)) <= queries + 1
    return backends


# ---- catalog -> backends ---------------------------------------------------------------------


async def test_first_load_delivers_every_passing_instance(consul: FakeConsul, watch) -> None:
    consul.add_instance(SERVICE, "g1", address="10.0.0.1", port=8001)
    consul.add_instance(SERVICE, "g2", address="10.0.0.2", port=8002)
    consul.add_instance("other", "o1", address="10.0.0.9", port=9000)

    w, deliveries = await watch()
    backends = await deliveries.next()

    assert backends == [
        BackendConfig("g1", Address("10.0.0.1", 8001), None, 1, "consul"),
        BackendConfig("g2", Address("10.0.0.2", 8002), None, 1, "consul"),
    ]
    assert w.updates["success"] == 1 and w.last_success is not None
    first = consul.health_requests(SERVICE)[0]
    assert first.param("passing") == "" and first.param("index") is None


async def test_empty_service_is_delivered_on_first_answer(watch) -> None:
    w, deliveries = await watch()
    assert await deliveries.next() == []


async def test_add_remove_update_are_delivered_promptly(consul: FakeConsul, watch) -> None:
    consul.add_instance(SERVICE, "g1", address="10.0.0.1", port=8001)
    w, deliveries = await watch(wait=LONG_WAIT)
    await deliveries.next()

    added = await latency(
        consul, deliveries, lambda: consul.add_instance(SERVICE, "g2", address="10.0.0.2"), "add")
    assert {b.id for b in added} == {"g1", "g2"}

    removed = await latency(consul, deliveries, lambda: consul.remove_instance("g1"), "remove")
    assert [b.id for b in removed] == ["g2"]

    updated = await latency(
        consul, deliveries, lambda: consul.update_instance("g2", port=9999), "update")
    assert updated[0].address == Address("10.0.0.2", 9999)

    # Blocking queries carry the last index and the configured wait.
    last = consul.health_requests(SERVICE)[-1]
    assert int(last.param("index") or 0) > 0 and last.param("wait") == f"{LONG_WAIT * 1000:.0f}ms"


async def test_only_passing_instances_are_delivered(consul: FakeConsul, watch) -> None:
    consul.add_instance(SERVICE, "ok")
    consul.add_instance(SERVICE, "sick", status=CRITICAL)
    consul.add_instance(SERVICE, "meh", status=WARNING)
    w, deliveries = await watch()
    assert {b.id for b in await deliveries.next()} == {"ok"}

    consul.set_check_status("sick", PASSING)
    assert {b.id for b in await deliveries.next()} == {"ok", "sick"}

    consul.set_maintenance("ok", reason="deploy")
    assert {b.id for b in await deliveries.next()} == {"sick"}

    consul.set_node_maintenance("node-sick")
    assert await deliveries.next() == []


async def test_every_configured_tag_must_match(consul: FakeConsul, watch) -> None:
    consul.add_instance(SERVICE, "both", tags=["prod", "blue"])
    consul.add_instance(SERVICE, "prod-only", tags=["prod"])
    consul.add_instance(SERVICE, "canary", tags=["canary", "blue"])
    w, deliveries = await watch(tags=("prod", "blue"))
    assert {b.id for b in await deliveries.next()} == {"both"}
    assert consul.health_requests(SERVICE)[0].query.count(("tag", "prod")) == 1


async def test_datacenter_is_queried(consul: FakeConsul, watch) -> None:
    consul.add_instance(SERVICE, "here", datacenter="dc1")
    consul.add_instance(SERVICE, "there", datacenter="dc2")
    w, deliveries = await watch(datacenter="dc2")
    assert {b.id for b in await deliveries.next()} == {"there"}


async def test_empty_service_address_falls_back_to_node_address(consul: FakeConsul, watch) -> None:
    consul.add_instance(SERVICE, "g1", address="", node="n1", node_address="10.9.8.7", port=8100)
    w, deliveries = await watch()
    assert (await deliveries.next())[0].address == Address("10.9.8.7", 8100)


async def test_same_service_id_on_two_nodes_is_two_backends(consul: FakeConsul, watch) -> None:
    # Service IDs are unique per agent only; registrations without an ID all use the name.
    consul.add_instance(SERVICE, SERVICE, node="n1", address="10.0.0.1")
    consul.add_instance(SERVICE, SERVICE, node="n2", address="10.0.0.2")
    w, deliveries = await watch()
    backends = await deliveries.next()
    assert {b.id for b in backends} == {f"{SERVICE}@n1", f"{SERVICE}@n2"}


@pytest.mark.parametrize(
    ("region_from", "tags", "meta", "expected"),
    [
        ("meta:region", ["prod"], {"region": "eu-west"}, "eu-west"),
        ("meta:region", ["prod"], {}, None),
        ("tag:region=", ["prod", "region=eu-south", "region=na-east"], {}, "eu-south"),
        ("tag:region=", ["prod"], {"region": "eu-west"}, None),
        (None, ["region=eu-south"], {"region": "eu-west"}, None),
    ],
)
async def test_region_comes_from_meta_or_tag(
    consul: FakeConsul, watch, region_from: str | None, tags: list[str], meta: dict[str, str],
    expected: str | None,
) -> None:
    consul.add_instance(SERVICE, "g1", tags=tags, meta=meta)
    w, deliveries = await watch(region_from=region_from)
    assert (await deliveries.next())[0].region == expected


async def test_weight_is_weights_passing_clamped_to_one(consul: FakeConsul, watch) -> None:
    consul.add_instance(SERVICE, "heavy", weights={"Passing": 5, "Warning": 1})
    consul.add_instance(SERVICE, "zero", weights={"Passing": 0, "Warning": 0})
    consul.add_instance(SERVICE, "default")
    w, deliveries = await watch(weight_from="weights")
    weights = {b.id: b.weight for b in await deliveries.next()}
    assert weights == {"heavy": 5, "zero": 1, "default": 1}

    w2, plain = await watch(weight_from=None)
    assert {b.weight for b in await plain.next()} == {1}


# ---- ACL token ---------------------------------------------------------------------------------


@pytest.fixture
async def acl_consul() -> AsyncIterator[FakeConsul]:
    fake = FakeConsul(acl_token="s3cret")
    await fake.start()
    yield fake
    await fake.close()


async def test_token_from_token_env_is_sent(acl_consul: FakeConsul, watch, monkeypatch) -> None:
    monkeypatch.setenv("TEST_CONSUL_TOKEN", "s3cret")
    acl_consul.add_instance(SERVICE, "g1")
    w, deliveries = await watch(address=acl_consul.address)
    assert [b.id for b in await deliveries.next()] == ["g1"]
    assert {r.token for r in acl_consul.health_requests(SERVICE)} == {"s3cret"}


async def test_wrong_token_is_an_error_not_an_empty_pool(
    acl_consul: FakeConsul, watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_CONSUL_TOKEN", "wrong")
    acl_consul.add_instance(SERVICE, "g1")
    w, deliveries = await watch(address=acl_consul.address)
    await until(lambda: w.updates["error"] >= 2)
    assert deliveries.sets == [] and w.failing and w.last_success is None


async def test_acl_filtered_empty_answer_is_an_error_not_an_empty_pool(
    acl_consul: FakeConsul, watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Anonymous (no token) under default deny: Consul answers 200 [] and says it filtered.
    monkeypatch.delenv("TEST_CONSUL_TOKEN", raising=False)
    acl_consul.add_instance(SERVICE, "g1")
    w, deliveries = await watch(address=acl_consul.address)
    await until(lambda: w.updates["error"] >= 1)
    assert deliveries.sets == []


# ---- blocking-query index rules ----------------------------------------------------------------


async def test_index_going_backwards_restarts_the_blocking_loop(consul: FakeConsul, watch) -> None:
    consul.add_instance(SERVICE, "g1")
    w, deliveries = await watch(wait=LONG_WAIT)
    await deliveries.next()
    await until(lambda: len(consul.health_requests(SERVICE)) >= 2)
    before = len(consul.health_requests(SERVICE))

    consul.reset_index(to=3)  # like a restore of an older snapshot: indexes drop
    # The watcher answers the drop with a non-blocking read (no index), then blocks at 3.
    await until(lambda: any(r.param("index") is None for r in consul.health_requests(SERVICE)[before:]))
    await until(lambda: consul.health_requests(SERVICE)[-1].param("index") == "3")

    added = await latency(
        consul, deliveries, lambda: consul.add_instance(SERVICE, "g2"), "add after index reset")
    assert {b.id for b in added} == {"g1", "g2"}


async def test_index_zero_is_never_used_to_block(consul: FakeConsul, watch) -> None:
    consul.add_instance(SERVICE, "g1")
    consul.force_index(SERVICE, 0)  # the Consul bug the docs warn about
    w, deliveries = await watch(wait=0.5)
    await deliveries.next()
    t0 = time.monotonic()
    await until(lambda: len(consul.health_requests(SERVICE)) >= 4)
    elapsed = time.monotonic() - t0
    requests = consul.health_requests(SERVICE)
    assert [r.param("index") for r in requests[1:]] == ["1"] * (len(requests) - 1)
    # Blocking 0.5 s each (a busy machine only makes fewer): no busy loop.
    assert len(requests) - 1 <= elapsed / 0.5 + 2


async def test_no_hot_loop_while_nothing_changes(consul: FakeConsul, watch) -> None:
    consul.add_instance(SERVICE, "g1")
    w, deliveries = await watch(wait=0.25)
    await deliveries.next()
    start = len(consul.health_requests(SERVICE))
    t0 = time.monotonic()
    await until(lambda: w.updates["unchanged"] >= 4)
    elapsed = time.monotonic() - t0
    count = len(consul.health_requests(SERVICE)) - start
    print(f"consul queries in {elapsed:.2f} s with wait=250ms and no change: {count}")
    # One query per blocking wait at most (a busy machine only makes fewer); a hot loop
    # would make hundreds.
    assert count <= elapsed / 0.25 + 2
    assert len(deliveries.sets) == 1


async def test_churning_service_is_rate_limited(consul: FakeConsul, watch) -> None:
    consul.add_instance(SERVICE, "g1")
    w, deliveries = await watch()
    await deliveries.next()

    async def churn() -> None:
        n = 0
        while True:
            n += 1
            consul.update_instance("g1", meta={"rev": str(n)})  # bumps the index, same backends
            await asyncio.sleep(0.005)

    start = len(consul.health_requests(SERVICE))
    t0 = time.monotonic()
    task = asyncio.create_task(churn())
    await asyncio.sleep(2.0)
    task.cancel()
    count = len(consul.health_requests(SERVICE)) - start
    elapsed = time.monotonic() - t0  # 2 s, or more if the loop was starved
    print(f"consul queries in {elapsed:.2f} s while the index changes every 5 ms: {count}")
    # Burst of 5 (one spent on the first load), then one a second; without the limit the
    # watcher would query once per change, hundreds of times.
    assert count <= 4 + elapsed + 2


# ---- outages -----------------------------------------------------------------------------------


async def test_consul_errors_keep_the_last_set_and_recovery_resumes(
    consul: FakeConsul, watch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="balancer.consul")
    consul.add_instance(SERVICE, "g1")
    consul.add_instance(SERVICE, "g2")
    w, deliveries = await watch()
    await deliveries.next()
    await asyncio.sleep(0.05)

    consul.fail(500, "No cluster leader")  # also ends the query that is blocked right now
    consul.remove_instance("g2")
    await until(lambda: w.updates["error"] >= 4)
    assert len(deliveries.sets) == 1 and w.failing

    t0 = time.monotonic()
    consul.recover()
    backends = await deliveries.next()
    print(f"consul recovery -> delivery: {(time.monotonic() - t0) * 1000:.1f} ms")
    assert [b.id for b in backends] == ["g1"] and not w.failing

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "failed" in r.message]
    recoveries = [r for r in caplog.records if "reachable again" in r.message]
    assert len(warnings) == 1 and "No cluster leader" in warnings[0].message
    assert len(recoveries) == 1


async def test_consul_down_and_restarted_on_same_port(consul: FakeConsul, watch) -> None:
    consul.add_instance(SERVICE, "g1")
    w, deliveries = await watch()
    await deliveries.next()
    await asyncio.sleep(0.05)

    await consul.stop()  # connections refused; the blocked query is cut
    errors = w.updates["error"]
    await until(lambda: w.updates["error"] >= errors + 2)
    assert len(deliveries.sets) == 1

    consul.add_instance(SERVICE, "g2")
    await consul.start()
    backends = await deliveries.next()
    assert {b.id for b in backends} == {"g1", "g2"}


async def test_consul_unreachable_from_the_start_delivers_nothing(watch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    w, deliveries = await watch(address=f"http://127.0.0.1:{closed_port}")
    await until(lambda: w.updates["error"] >= 2)
    assert deliveries.sets == [] and w.last_success is None


# ---- self-registration -------------------------------------------------------------------------


@pytest.fixture
async def admin() -> AsyncIterator[dict[str, object]]:
    """A stand-in for the admin listener: /healthz answers `state["status"]`."""
    state: dict[str, object] = {"status": 200}

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(status=int(state["status"]))  # type: ignore[call-overload]

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state["url"] = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


async def test_registration_is_checked_watched_and_deregistered(
    consul: FakeConsul, watch, admin
) -> None:
    config = ConsulConfig(address=consul.address, token_env="TEST_CONSUL_TOKEN", wait=WAIT,
                          register=ConsulRegister("edge-balancer", ConsulCheck("/healthz", 0.1)))
    registration = ConsulRegistration(config)
    await registration.register("10.0.0.7", 8080, str(admin["url"]))

    service_id = registration.service_id
    assert service_id == f"edge-balancer-{socket.gethostname()}-8080"
    listed = consul.agent_services()[service_id]
    assert listed["Service"] == "edge-balancer"
    assert (listed["Address"], listed["Port"]) == ("10.0.0.7", 8080)

    # The double probes the admin URL like the agent: the instance shows up once it passes.
    w, deliveries = await watch(service="edge-balancer")
    backends = await deliveries.next()
    if not backends:
        backends = await deliveries.next()
    assert backends == [BackendConfig(service_id, Address("10.0.0.7", 8080), None, 1, "consul")]

    admin["status"] = 503
    assert await deliveries.next() == []
    admin["status"] = 200
    assert len(await deliveries.next()) == 1

    await registration.deregister()
    assert await deliveries.next() == []
    assert service_id not in consul.agent_services() and registration.service_id is None
    await registration.deregister()  # idempotent


async def test_wildcard_listener_registers_with_the_node_address(consul: FakeConsul, admin) -> None:
    config = ConsulConfig(address=consul.address, token_env="TEST_CONSUL_TOKEN",
                          register=ConsulRegister("edge-balancer"))
    registration = ConsulRegistration(config)
    await registration.register("0.0.0.0", 8443, str(admin["url"]))
    assert consul.agent_services()[str(registration.service_id)]["Address"] == ""
    await registration.deregister()


async def test_registration_needs_the_token(acl_consul: FakeConsul, admin, monkeypatch) -> None:
    config = ConsulConfig(address=acl_consul.address, token_env="TEST_CONSUL_TOKEN",
                          register=ConsulRegister("edge-balancer"))
    monkeypatch.delenv("TEST_CONSUL_TOKEN", raising=False)
    with pytest.raises(Exception, match="403"):
        await ConsulRegistration(config).register("10.0.0.7", 8080, str(admin["url"]))
    monkeypatch.setenv("TEST_CONSUL_TOKEN", "s3cret")
    registration = ConsulRegistration(config)
    await registration.register("10.0.0.7", 8080, str(admin["url"]))
    assert registration.service_id in acl_consul.agent_services()
    await registration.deregister()


# ---- real Consul -------------------------------------------------------------------------------


@pytest.mark.skipif(not os.environ.get("CONSUL_HTTP_ADDR"),
                    reason="needs a real Consul (CONSUL_HTTP_ADDR)")
async def test_real_consul_registration_is_picked_up() -> None:
    address = os.environ["CONSUL_HTTP_ADDR"]
    address = address if "://" in address else f"http://{address}"
    config = ConsulConfig(address=address, token_env="CONSUL_HTTP_TOKEN", wait=WAIT)
    service = f"balancer-test-{uuid.uuid4().hex[:8]}"
    token = os.environ.get("CONSUL_HTTP_TOKEN")
    headers = {"X-Consul-Token": token} if token else {}
    deliveries = Deliveries()
    discovery = ConsulDiscoveryConfig(service, region_from="meta:region")
    w = ConsulWatch(config, "pool", discovery, deliveries)
    async with aiohttp.ClientSession(headers=headers) as session:
        await w.start()
        try:
            assert await deliveries.next(timeout=5.0) == []
            async with session.put(f"{address}/v1/agent/service/register", json={
                "ID": f"{service}-1", "Name": service, "Address": "10.1.2.3", "Port": 8123,
                "Meta": {"region": "eu-west"}, "Weights": {"Passing": 3, "Warning": 1},
            }) as resp:
                assert resp.status == 200, await resp.text()
            backends = await deliveries.next(timeout=5.0)
            assert backends == [
                BackendConfig(f"{service}-1", Address("10.1.2.3", 8123), "eu-west", 3, "consul")]
        finally:
            async with session.put(f"{address}/v1/agent/service/deregister/{service}-1") as resp:
                await resp.read()
            await w.stop()
