"""Consul discovery through the real balancer (docs/configuration.md `consul`,
`discovery.consul`; docs/operations.md, "Consul").

The Consul double (tests/fakes/consul.py) runs on a loopback port; real aiohttp backends are
registered in it; the real balancer watches it and proxies real requests. What is asserted is
what a player, an operator (/admin/pools, /metrics, logs) or Consul itself would observe.

Run with -s to see the measured catalog-change -> traffic latency and the outage figures.
The 30 s Consul outage under load runs only with BALANCER_LONG_TESTS=1 (docs/operations.md);
a 3 s version of it always runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import statistics
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Running, pool_yaml
from tests.fakes.backends import Backend, free_port
from tests.fakes.consul import CRITICAL, FakeConsul

SERVICE = "games"
COOKIE = "LB_GAME"
TOKEN_ENV = "TEST_BALANCER_CONSUL_TOKEN"
# Generous bounds for "eventually": each is a hang guard, not a performance claim.
SETTLE = 5.0


# ---- fixtures and helpers ------------------------------------------------------------------------



@pytest.fixture(autouse=True)
def sticky_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STICKY_SECRET", "consul-balancer-test-secret-0123456789")


def register(consul: FakeConsul, backend: Backend, *, tags: tuple[str, ...] = ("prod",),
             region: str = "eu-west", **extra: object) -> str:
    """Register a real backend in the double as an instance of SERVICE (id = backend name)."""
    return consul.add_instance(SERVICE, backend.name, address="127.0.0.1", port=backend.port,
                               tags=list(tags), meta={"region": region}, **extra)  # type: ignore[arg-type]


def consul_section(consul: FakeConsul | str, extra: str = "") -> str:
    address = consul if isinstance(consul, str) else consul.address
    return f"consul:\n  address: {address}\n  wait: 1s\n  token_env: {TOKEN_ENV}\n" + extra


def discovered_pool(consul: FakeConsul, *, pool_extra: str = "", static: list[Backend] | None = None,
                    tags: str = "[prod]", consul_extra: str = "", routes_extra: str = "") -> str:
    """A config whose pool `games` is fed by Consul (optionally mixed with static backends)."""
    static_line = f"    backends: {pool_yaml(static)}\n" if static else ""
    extra = "".join(f"    {line}\n" for line in pool_extra.strip().splitlines())
    return (
        consul_section(consul, consul_extra)
        + "routes:\n  - {name: all, pool: games}\n" + routes_extra
        + "pools:\n  games:\n    balance: round_robin\n" + extra + static_line
        + "    discovery:\n      consul:\n"
        + f"        service: {SERVICE}\n        tags: {tags}\n        region_from: meta:region\n"
    )


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = SETTLE) -> float:
    """Poll `check` until it holds; returns how long that took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def _true(value: bool) -> bool:
    """A plain condition as the awaitable `eventually` polls."""
    return value


async def _state_is(client: aiohttp.ClientSession, lb: Running, backend_id: str, state: str) -> bool:
    return (await pool_doc(client, lb)).get(backend_id, {}).get("state") == state


async def _websockets_of(client: aiohttp.ClientSession, lb: Running, backend_id: str, n: int) -> bool:
    return (await pool_doc(client, lb))[backend_id]["websockets"] == n


async def _is_not_none(value: Awaitable[object]) -> bool:
    return (await value) is not None


async def _errors_above(client: aiohttp.ClientSession, lb: Running, floor: float) -> bool:
    return await consul_errors(client, lb) >= floor


async def _moved(value: Awaitable[float | None], old: float | None) -> bool:
    return (await value) != old


async def pool_doc(client: aiohttp.ClientSession, lb: Running, pool: str = "games") -> dict[str, dict]:
    """The pool's backends as /admin/pools shows them, by id."""
    async with client.get(lb.admin_url + "/admin/pools") as resp:
        assert resp.status == 200
        doc = await resp.json()
    return {b["id"]: b for p in doc["pools"] if p["name"] == pool for b in p["backends"]}


async def wait_for_ids(client: aiohttp.ClientSession, lb: Running, ids: set[str],
                       pool: str = "games") -> dict[str, dict]:
    async def check() -> bool:
        return set(await pool_doc(client, lb, pool)) == ids
    await eventually(check, f"pool {pool} lists exactly {sorted(ids)}")
    return await pool_doc(client, lb, pool)


async def metrics(client: aiohttp.ClientSession, lb: Running) -> list[tuple[str, dict[str, str], float]]:
    async with client.get(lb.admin_url + "/metrics") as resp:
        text = await resp.text()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples]


async def metric(client: aiohttp.ClientSession, lb: Running, name: str, **labels: str) -> float | None:
    for sample_name, sample_labels, value in await metrics(client, lb):
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            return value
    return None


async def consul_errors(client: aiohttp.ClientSession, lb: Running) -> float:
    value = await metric(client, lb, "balancer_consul_updates_total", service=SERVICE, result="error")
    return value or 0.0


async def last_success(client: aiohttp.ClientSession, lb: Running) -> float | None:
    return await metric(client, lb, "balancer_consul_last_success_timestamp_seconds", service=SERVICE)


@dataclass
class Answer:
    status: int
    backend: str | None
    set_cookie: str | None


async def get(client: aiohttp.ClientSession, lb: Running, path: str = "/lobby",
              cookie: str | None = None) -> Answer:
    headers = {"Cookie": cookie} if cookie else {}
    async with client.get(lb.url + path, headers=headers) as resp:
        await resp.read()
        sticky = [c for c in resp.headers.getall("Set-Cookie", []) if c.startswith(COOKIE + "=")]
        return Answer(resp.status, resp.headers.get("X-Backend"),
                      sticky[0].split(";", 1)[0] if sticky else None)


async def spread(client: aiohttp.ClientSession, lb: Running, n: int = 12) -> Counter[str | None]:
    """Which backends n new players (no cookie) land on; every answer must be a 200."""
    seen: Counter[str | None] = Counter()
    for _ in range(n):
        answer = await get(client, lb)
        assert answer.status == 200
        seen[answer.backend] += 1
    return seen


async def start_discovered(start_balancer, client: aiohttp.ClientSession, consul: FakeConsul,
                           ids: set[str], **pool: object) -> Running:
    lb = await start_balancer(discovered_pool(consul, **pool))  # type: ignore[arg-type]
    await wait_for_ids(client, lb, ids)
    return lb


# ---- catalog -> traffic --------------------------------------------------------------------------


async def test_traffic_reaches_only_passing_tagged_instances(start_balancer, backends, client, consul):
    g1, g2, canary, sick = await backends("g1", "g2", "canary", "sick")
    register(consul, g1, region="eu-west", weights={"Passing": 3, "Warning": 1})
    register(consul, g2, region="eu-south")
    register(consul, canary, tags=("canary",))
    register(consul, sick, status=CRITICAL)

    lb = await start_discovered(start_balancer, client, consul, {"g1", "g2"})

    doc = await pool_doc(client, lb)
    assert {b["source"] for b in doc.values()} == {"consul"}
    assert (doc["g1"]["region"], doc["g1"]["weight"]) == ("eu-west", 3)
    assert (doc["g2"]["region"], doc["g2"]["weight"]) == ("eu-south", 1)
    assert doc["g1"]["address"] == g1.address and doc["g1"]["state"] == "healthy"
    assert set(await spread(client, lb, 8)) == {"g1", "g2"}
    assert canary.count() == 0 and sick.count() == 0


async def test_one_pool_mixes_static_and_discovered_backends(start_balancer, backends, client, consul):
    fixed, found = await backends("fixed", "found")
    register(consul, found)
    lb = await start_discovered(start_balancer, client, consul, {"fixed", "found"}, static=[fixed])

    doc = await pool_doc(client, lb)
    assert (doc["fixed"]["source"], doc["found"]["source"]) == ("static", "consul")
    assert set(await spread(client, lb, 6)) == {"fixed", "found"}

    # The catalog owns only the discovered part: emptying it leaves the static backend serving.
    consul.remove_instance("found")
    await wait_for_ids(client, lb, {"fixed"})
    assert set(await spread(client, lb, 4)) == {"fixed"}


async def test_new_instance_gets_traffic_promptly(start_balancer, backends, client, consul):
    g1, *joiners = await backends("g1", "j1", "j2", "j3")
    register(consul, g1)
    lb = await start_discovered(start_balancer, client, consul, {"g1"})

    took: list[float] = []
    for joiner in joiners:
        await asyncio.sleep(0.3)  # the watch is back in its blocking query; the change wakes it
        start = time.monotonic()
        register(consul, joiner)
        while (await get(client, lb)).backend != joiner.name:
            assert time.monotonic() - start < SETTLE, f"{joiner.name} got no traffic"
        took.append(time.monotonic() - start)
    print("\nconsul add -> first request on the new backend: "
          + ", ".join(f"{t * 1000:.1f} ms" for t in took)
          + f" (median {statistics.median(took) * 1000:.1f} ms; target < 1000 ms)")
    assert set(await spread(client, lb, 8)) == {"g1", "j1", "j2", "j3"}


# ---- leaving the catalog: drained, not cut -------------------------------------------------------


@dataclass
class Player:
    """A player pinned to one backend: a sticky cookie, an open WebSocket, a slow request."""

    backend: Backend
    cookie: str
    ws: aiohttp.ClientWebSocketResponse
    slow: asyncio.Task[Answer] = field(init=False)


async def pin_player(client: aiohttp.ClientSession, lb: Running, backend: Backend) -> Player:
    cookie = await sticky_cookie_for(client, lb, backend)
    ws = await client.ws_connect(lb.url + "/ws/table", headers={"Cookie": cookie})
    await ws.send_str("hello")
    assert (await ws.receive_str(timeout=2)) == f"{backend.name}:hello"
    player = Player(backend, cookie, ws)
    # A slow request in flight on the backend when it leaves (a bet being settled).
    backend.hang_seconds, backend.mode = 0.5, "hang"
    player.slow = asyncio.create_task(get(client, lb, "/settle", player.cookie))
    await eventually(lambda: _true(backend.count(path="/settle") == 1), "slow request arrived")
    backend.mode = "ok"
    return player


async def sticky_cookie_for(client: aiohttp.ClientSession, lb: Running, backend: Backend) -> str:
    """The cookie of a new player whom the balancer placed on `backend`."""
    for _ in range(40):
        answer = await get(client, lb)
        if answer.backend == backend.name and answer.set_cookie:
            return answer.set_cookie
    raise AssertionError(f"no new player landed on {backend.name}")


async def test_instance_leaving_the_catalog_is_drained_not_cut(start_balancer, backends, client, consul):
    gone, sick, maint, quiet, stays = await backends("gone", "sick", "maint", "quiet", "stays")
    for b in (gone, sick, maint, quiet, stays):
        register(consul, b)
    lb = await start_discovered(
        start_balancer, client, consul, {"gone", "sick", "maint", "quiet", "stays"},
        pool_extra=f"sticky: {{cookie: {COOKIE}, ttl: 1h, secret_env: STICKY_SECRET}}\n"
                   "drain_timeout: 6s")
    players = [await pin_player(client, lb, b) for b in (gone, sick, maint)]
    # A player between two rounds: nothing open on its backend, only the cookie.
    between_rounds = await sticky_cookie_for(client, lb, quiet)

    # Deregistered, failing its check, in maintenance mode: three ways out of `?passing`.
    consul.remove_instance("gone")
    consul.set_check_status("sick", CRITICAL)
    consul.set_maintenance("maint", reason="deploy")
    consul.remove_instance("quiet")
    left_at = time.monotonic()

    async def all_draining() -> bool:
        doc = await pool_doc(client, lb)
        return all(doc.get(name, {}).get("state") == "draining"
                   for name in ("gone", "sick", "maint", "quiet"))
    await eventually(all_draining, "the four leavers are draining")

    # No new player reaches a leaver ...
    assert set(await spread(client, lb, 12)) == {"stays"}
    for player in players:
        # ... but what is under way on it carries on: the bet in flight is answered by it,
        answer = await player.slow
        assert (answer.status, answer.backend) == (200, player.backend.name)
        # its sticky player keeps playing there,
        again = await get(client, lb, cookie=player.cookie)
        assert (again.status, again.backend, again.set_cookie) == (200, player.backend.name, None)
        # and its WebSocket stays open.
        await player.ws.send_str("still there?")
        assert (await player.ws.receive_str(timeout=2)) == f"{player.backend.name}:still there?"
    # A sticky player with nothing open comes back to its game server too.
    await asyncio.sleep(0.3)
    for _ in range(3):
        back = await get(client, lb, cookie=between_rounds)
        assert (back.status, back.backend, back.set_cookie) == (200, "quiet", None)
    assert time.monotonic() - left_at < 6, "the checks above must run within drain_timeout"

    # When drain_timeout runs out the WebSockets are closed and the leavers are gone.
    for player in players:
        message = await player.ws.receive(timeout=SETTLE + 6)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.CLOSING)
    await wait_for_ids(client, lb, {"stays"})
    for cookie in (players[0].cookie, between_rounds):
        moved = await get(client, lb, cookie=cookie)
        assert (moved.status, moved.backend) == (200, "stays") and moved.set_cookie is not None
    for player in players:
        await player.ws.close()


async def test_leaver_without_sticky_players_goes_once_its_last_websocket_ends(
    start_balancer, backends, client, consul
):
    g1, g2 = await backends("g1", "g2")
    register(consul, g1)
    register(consul, g2)
    lb = await start_discovered(start_balancer, client, consul, {"g1", "g2"}, pool_extra="drain_timeout: 1m")
    sockets = [await client.ws_connect(lb.url + "/ws/t") for _ in range(2)]
    names = set()
    for ws in sockets:
        await ws.send_str("x")
        names.add((await ws.receive_str(timeout=2)).split(":")[0])
    assert names == {"g1", "g2"}  # round robin: one socket on each

    consul.remove_instance("g1")
    await eventually(lambda: _state_is(client, lb, "g1", "draining"), "g1 draining")
    doc = await pool_doc(client, lb)
    assert doc["g1"]["websockets"] == 1
    for ws in sockets:  # nobody was cut
        await ws.send_str("y")
        assert (await ws.receive_str(timeout=2)).endswith(":y")

    for ws in sockets:
        await ws.close()
    await wait_for_ids(client, lb, {"g2"})


async def test_backend_that_stays_keeps_its_state_and_counters(start_balancer, backends, client, consul):
    g1, g2 = await backends("g1", "g2")
    register(consul, g1)
    register(consul, g2)
    lb = await start_discovered(
        start_balancer, client, consul, {"g1", "g2"},
        pool_extra="health_check: {path: /health, interval: 300ms, timeout: 200ms, "
                   "healthy_threshold: 1, unhealthy_threshold: 2}")
    ws = await client.ws_connect(lb.url + "/ws/t")
    await ws.send_str("x")
    ws_backend = (await ws.receive_str(timeout=2)).split(":")[0]
    sick = g2 if ws_backend == "g1" else g1
    sick.mode = "error500"
    await eventually(lambda: _state_is(client, lb, sick.name, "unhealthy"), f"{sick.name} unhealthy")
    checks_before = await metric(client, lb, "balancer_health_checks_total",
                                 pool="games", backend=sick.name, result="failure")
    assert checks_before

    # Consul says something new about both (weight, region): same ids, so the same backends.
    consul.update_instance("g1", weights={"Passing": 4}, meta={"region": "eu-south"})
    consul.update_instance("g2", weights={"Passing": 4}, meta={"region": "eu-south"})

    async def reweighted() -> bool:
        return {b["weight"] for b in (await pool_doc(client, lb)).values()} == {4}
    await eventually(reweighted, "new weights applied")
    doc = await pool_doc(client, lb)
    # A new Backend would start healthy and need two failed probes (600 ms) to go down again.
    assert doc[sick.name]["state"] == "unhealthy"
    assert doc[ws_backend]["websockets"] == 1 and doc[ws_backend]["region"] == "eu-south"
    after = await metric(client, lb, "balancer_health_checks_total",
                         pool="games", backend=sick.name, result="failure")
    assert after is not None and after >= checks_before
    await ws.send_str("y")
    assert (await ws.receive_str(timeout=2)) == f"{ws_backend}:y"
    await ws.close()
    await eventually(lambda: _websockets_of(client, lb, ws_backend, 0), "websocket count back to 0")


# ---- Consul unreachable or erroring --------------------------------------------------------------


async def test_consul_answering_500_keeps_the_last_backends(
    start_balancer, backends, client, consul, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="balancer.consul")
    g1, g2 = await backends("g1", "g2")
    register(consul, g1)
    register(consul, g2)
    lb = await start_discovered(start_balancer, client, consul, {"g1", "g2"})
    await eventually(lambda: _is_not_none(last_success(client, lb)), "a first success is recorded")

    consul.fail(500, "No cluster leader")
    consul.remove_instance("g2")  # the catalog moves on while the balancer cannot see it
    errors = await consul_errors(client, lb)
    await eventually(lambda: _errors_above(client, lb, errors + 2), "errors counted")
    frozen = await last_success(client, lb)
    assert set(await spread(client, lb, 8)) == {"g1", "g2"}
    await eventually(lambda: _errors_above(client, lb, errors + 4), "the watch keeps retrying")
    assert await last_success(client, lb) == frozen
    assert set(await pool_doc(client, lb)) == {"g1", "g2"}
    outage_logs = [r.getMessage() for r in caplog.records
                   if r.levelno == logging.WARNING and "No cluster leader" in r.getMessage()]
    assert len(outage_logs) == 1 and "keeping the 2 last known backends" in outage_logs[0]

    consul.recover()
    await wait_for_ids(client, lb, {"g1"})
    assert (await last_success(client, lb) or 0) > (frozen or 0)
    assert any("reachable again" in r.getMessage() for r in caplog.records)


@dataclass
class OutageReport:
    outage: float
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    by_backend: Counter[str | None] = field(default_factory=Counter)
    errors_counted: float = 0.0
    last_success_moved_during_outage: bool = True
    recovery: float = 0.0


async def outage_under_load(lb: Running, client: aiohttp.ClientSession, consul: FakeConsul,
                            outage: float, margin: float, concurrency: int = 8,
                            pace: float = 0.005) -> OutageReport:
    """Players keep playing for `margin` seconds, then while Consul is stopped for `outage`
    seconds, then until it is back and `margin` seconds more."""
    report = OutageReport(outage)
    done = asyncio.Event()

    async def player() -> None:
        while not done.is_set():
            try:
                async with client.get(lb.url + "/lobby") as resp:
                    await resp.read()
                    if resp.status == 200:
                        report.ok += 1
                        report.by_backend[resp.headers.get("X-Backend")] += 1
                    else:
                        report.failures.append(f"HTTP {resp.status}")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                report.failures.append(repr(exc))
            await asyncio.sleep(pace)  # bounded load: each player pauses between requests

    players = [asyncio.create_task(player()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(margin)
        errors_before = await consul_errors(client, lb)
        await consul.stop()
        stopped_at = time.monotonic()
        # last_success is read once the blocked query has been cut, then must not move.
        await eventually(lambda: _errors_above(client, lb, errors_before + 1), "the outage is noticed")
        frozen = await last_success(client, lb)
        await asyncio.sleep(max(0.0, outage - (time.monotonic() - stopped_at)))
        report.last_success_moved_during_outage = await last_success(client, lb) != frozen
        report.errors_counted = await consul_errors(client, lb) - errors_before
        await consul.start()
        restarted_at = time.monotonic()
        await eventually(lambda: _moved(last_success(client, lb), frozen), "recovery")
        report.recovery = time.monotonic() - restarted_at
        await asyncio.sleep(margin)
    finally:
        done.set()
        await asyncio.gather(*players)
    return report


async def run_outage(start_balancer, backends, client, consul, caplog, outage: float,
                     margin: float) -> None:
    caplog.set_level(logging.INFO, logger="balancer.consul")
    g1, g2 = await backends("g1", "g2")
    register(consul, g1)
    register(consul, g2)
    lb = await start_discovered(start_balancer, client, consul, {"g1", "g2"})
    started = time.monotonic()
    report = await outage_under_load(lb, client, consul, outage, margin)
    took = time.monotonic() - started
    print(f"\nconsul outage {outage:.0f} s under load ({took:.1f} s of traffic, 8 players): "
          f"{report.ok} requests ok ({report.ok / took:.0f}/s), {len(report.failures)} failed, "
          f"per backend {dict(report.by_backend)}, {report.errors_counted:.0f} failed Consul "
          f"queries counted, last_success frozen: {not report.last_success_moved_during_outage}, "
          f"recovered {report.recovery * 1000:.0f} ms after Consul came back")
    assert report.failures == []
    assert set(report.by_backend) == {"g1", "g2"}
    assert report.errors_counted >= 1 and not report.last_success_moved_during_outage
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "keeping the 2 last known backends" in r.getMessage()]
    assert len(warnings) == 1  # the outage is logged once, not once per retry
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    assert set(await pool_doc(client, lb)) == {"g1", "g2"}


async def test_consul_outage_3s_under_load_fails_no_request(start_balancer, backends, client, consul, caplog):
    await run_outage(start_balancer, backends, client, consul, caplog, outage=3.0, margin=0.3)


@pytest.mark.skipif(os.environ.get("BALANCER_LONG_TESTS") != "1",
                    reason="30 s outage: run with BALANCER_LONG_TESTS=1 (docs/operations.md)")
async def test_consul_outage_30s_under_load_fails_no_request(start_balancer, backends, client, consul, caplog):
    await run_outage(start_balancer, backends, client, consul, caplog, outage=30.0, margin=2.0)


# ---- ACL token -----------------------------------------------------------------------------------


async def test_acl_token_from_token_env_is_sent(start_balancer, backends, client, monkeypatch):
    acl = FakeConsul(acl_token="s3cret-token")
    await acl.start()
    try:
        monkeypatch.setenv(TOKEN_ENV, "s3cret-token")
        (g1,) = await backends("g1")
        register(acl, g1)
        lb = await start_discovered(
            start_balancer, client, acl, {"g1"},
            consul_extra="  register: {service: edge-balancer, check: {http: /healthz, interval: 200ms}}\n")
        assert set(await spread(client, lb, 3)) == {"g1"}
        assert acl.agent_services()  # the registration needed the token too
        assert acl.requests and {r.token for r in acl.requests} == {"s3cret-token"}
    finally:
        await acl.close()


async def test_without_the_token_the_pool_stays_empty_instead_of_guessing(
    start_balancer, backends, client, monkeypatch
):
    acl = FakeConsul(acl_token="s3cret-token")
    await acl.start()
    try:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
        (g1,) = await backends("g1")
        register(acl, g1)
        lb = await start_balancer(discovered_pool(acl))
        await eventually(lambda: _errors_above(client, lb, 1), "the refused reads are counted")
        assert await pool_doc(client, lb) == {}
        assert (await get(client, lb)).status == 503
    finally:
        await acl.close()


# ---- self-registration ---------------------------------------------------------------------------


async def test_registers_itself_with_a_passing_check_and_deregisters_on_shutdown(
    start_balancer, backends, client, consul
):
    (g1,) = await backends("g1")
    register(consul, g1)
    lb = await start_discovered(
        start_balancer, client, consul, {"g1"},
        consul_extra="  register: {service: edge-balancer, check: {http: /healthz, interval: 200ms}}\n")

    async with client.get(consul.address + "/v1/agent/services") as resp:
        services = await resp.json()
    mine = [s for s in services.values() if s["Service"] == "edge-balancer"]
    assert len(mine) == 1
    assert (mine[0]["Address"], mine[0]["Port"]) == ("127.0.0.1", lb.port())
    service_id = mine[0]["ID"]

    async def passing() -> bool:
        async with client.get(consul.address + "/v1/health/service/edge-balancer?passing") as resp:
            return [e["Service"]["ID"] for e in await resp.json()] == [service_id]
    await eventually(passing, "Consul's HTTP check on the admin /healthz passes")
    # An instance is found through Consul only while it serves: the check follows /healthz.
    assert (await get(client, lb)).status == 200

    await lb.app.shutdown()
    async with client.get(consul.address + "/v1/agent/services") as resp:
        assert service_id not in await resp.json()


REGISTER = "  register: {service: edge-balancer, check: {http: /healthz, interval: 200ms}}\n"


def static_pool(consul: FakeConsul, backend: Backend, consul_extra: str = "") -> str:
    return (consul_section(consul, consul_extra)
            + f"routes:\n  - {{name: all, pool: web}}\npools:\n  web:\n    backends: {pool_yaml([backend])}\n")


async def registered(client: aiohttp.ClientSession, consul: FakeConsul) -> dict[str, dict]:
    """This balancer's entries in the agent's /v1/agent/services, by service id."""
    async with client.get(consul.address + "/v1/agent/services") as resp:
        services = await resp.json()
    return {k: v for k, v in services.items() if v["Service"].startswith("edge-")}


async def test_registration_is_retried_when_consul_is_down_at_start(start_balancer, backends, client, consul):
    (g1,) = await backends("g1")
    await consul.stop()  # connections refused on its port
    lb = await start_balancer(static_pool(consul, g1, REGISTER))
    assert (await get(client, lb)).backend == "g1"  # serving regardless

    await consul.start()  # same port
    async def listed() -> bool:
        return len(await registered(client, consul)) == 1
    await eventually(listed, "registered once Consul is back")


async def test_reload_follows_registration_changes(start_balancer, backends, client, consul):
    (g1,) = await backends("g1")
    lb = await start_balancer(static_pool(consul, g1))
    assert await registered(client, consul) == {}

    assert await lb.reload_with(static_pool(consul, g1, REGISTER)) == []
    assert [s["Service"] for s in (await registered(client, consul)).values()] == ["edge-balancer"]

    assert await lb.reload_with(static_pool(consul, g1, REGISTER.replace("edge-balancer", "edge-two"))) == []
    assert [s["Service"] for s in (await registered(client, consul)).values()] == ["edge-two"]

    assert await lb.reload_with(static_pool(consul, g1)) == []
    assert await registered(client, consul) == {}


async def test_shutdown_leaves_consul_before_finishing_in_flight_requests(
    start_balancer, backends, client, consul
):
    (g1,) = await backends("g1")
    lb = await start_balancer(static_pool(consul, g1, REGISTER))
    assert len(await registered(client, consul)) == 1
    g1.hang_seconds, g1.mode = 1.0, "hang"
    bet = asyncio.create_task(get(client, lb, "/settle"))
    await eventually(lambda: _true(g1.count(path="/settle") == 1), "the bet reached g1")

    stopping = asyncio.create_task(lb.app.shutdown())
    async def gone() -> bool:
        return await registered(client, consul) == {}
    await eventually(gone, "deregistered")
    # New players are sent elsewhere while this one's bet is still being settled here.
    assert not bet.done()
    assert (await bet).status == 200
    await stopping


# ---- reload and shutdown: the watches follow the config ------------------------------------------


async def assert_not_watched(consul: FakeConsul) -> None:
    """A live watch re-asks at once when the catalog changes under its blocking query; a
    stopped one stays silent."""
    await asyncio.sleep(0.1)
    asked = len(consul.health_requests(SERVICE))
    consul.add_instance(SERVICE, "newcomer", port=1)
    await asyncio.sleep(0.4)
    assert len(consul.health_requests(SERVICE)) == asked


def fresh_queries(consul: FakeConsul, since: int, service: str = SERVICE) -> list:
    """Index-less health queries after the first `since`: each is the start of a new watch."""
    return [r for r in consul.health_requests(service)[since:] if r.param("index") is None]


async def test_unrelated_reload_keeps_the_watch(start_balancer, backends, client, consul):
    g1, g2 = await backends("g1", "g2")
    register(consul, g1)
    register(consul, g2)
    lb = await start_discovered(start_balancer, client, consul, {"g1", "g2"})
    ws = await client.ws_connect(lb.url + "/ws/t")
    await ws.send_str("x")
    on = (await ws.receive_str(timeout=2)).split(":")[0]
    seen = len(consul.health_requests(SERVICE))

    # New settings for the pool and a new route, but the same discovery and consul sections.
    assert await lb.reload_with(discovered_pool(
        consul, pool_extra="drain_timeout: 2m",
        routes_extra="  - {name: other, pool: games, match: {path_prefix: /other/}}\n")) == []
    await asyncio.sleep(0.3)
    assert fresh_queries(consul, seen) == []
    assert (await pool_doc(client, lb))[on]["websockets"] == 1

    # A consul section that differs only in self-registration does not restart it either.
    assert await lb.reload_with(discovered_pool(
        consul, consul_extra="  register: {service: edge-balancer}\n")) == []
    await asyncio.sleep(0.3)
    assert fresh_queries(consul, seen) == []
    await ws.close()


async def test_reload_with_new_tags_rewatches(start_balancer, backends, client, consul):
    prod, blue = await backends("prod1", "blue1")
    register(consul, prod, tags=("prod",))
    register(consul, blue, tags=("prod", "blue"))
    lb = await start_discovered(start_balancer, client, consul, {"prod1", "blue1"})

    assert await lb.reload_with(discovered_pool(consul, tags="[prod, blue]")) == []
    await wait_for_ids(client, lb, {"blue1"})
    assert set(await spread(client, lb, 4)) == {"blue1"}


async def test_reload_dropping_discovery_drains_the_discovered_backends(
    start_balancer, backends, client, consul
):
    fixed, found = await backends("fixed", "found")
    register(consul, found)
    lb = await start_discovered(start_balancer, client, consul, {"fixed", "found"}, static=[fixed])

    assert await lb.reload_with(
        consul_section(consul)
        + f"routes:\n  - {{name: all, pool: games}}\npools:\n  games:\n    backends: {pool_yaml([fixed])}\n"
    ) == []
    # Nothing would ever update them again: they leave like backends removed by a reload.
    await wait_for_ids(client, lb, {"fixed"})
    assert set(await spread(client, lb, 4)) == {"fixed"}
    await assert_not_watched(consul)


async def test_reload_removing_the_pool_stops_its_watch(start_balancer, backends, client, consul):
    g1, other = await backends("g1", "other")
    register(consul, g1)
    lb = await start_discovered(start_balancer, client, consul, {"g1"})
    assert await lb.reload_with(
        consul_section(consul)
        + f"routes:\n  - {{name: all, pool: web}}\npools:\n  web:\n    backends: {pool_yaml([other])}\n"
    ) == []
    assert (await get(client, lb)).backend == "other"
    await assert_not_watched(consul)


async def test_shutdown_stops_the_watch(start_balancer, backends, client, consul):
    (g1,) = await backends("g1")
    register(consul, g1)
    lb = await start_discovered(start_balancer, client, consul, {"g1"})
    await lb.app.shutdown()
    await assert_not_watched(consul)


async def test_two_pools_on_one_service_export_one_series_per_label_set(
    start_balancer, backends, client, consul
):
    (g1,) = await backends("g1")
    register(consul, g1)
    discovery = (f"    discovery:\n      consul:\n        service: {SERVICE}\n")
    lb = await start_balancer(
        consul_section(consul)
        + "routes:\n  - {name: a, pool: a, match: {path_prefix: /a/}}\n  - {name: b, pool: b}\n"
        + "pools:\n  a:\n" + discovery + "  b:\n" + discovery)
    await wait_for_ids(client, lb, {"g1"}, pool="a")
    await wait_for_ids(client, lb, {"g1"}, pool="b")
    samples = [(name, tuple(sorted(labels.items()))) for name, labels, _ in await metrics(client, lb)
               if name.startswith("balancer_consul_")]
    # Prometheus refuses a scrape that repeats a series.
    assert samples and len(samples) == len(set(samples))


# ---- workers: N (the control process watches and registers, the workers serve) -------------------


async def test_workers_serve_discovered_backends_and_the_instance_registers_once(
    backends, client, consul, tmp_path
):
    (g1,) = await backends("g1")
    register(consul, g1)
    port = free_port()  # a fixed port: the control process registers the configured address
    config = tmp_path / "workers.yaml"
    config.write_text(consul_section(consul, REGISTER) + textwrap.dedent(f"""\
        listeners:
          - {{name: public, address: "127.0.0.1:{port}"}}
        admin: {{address: "127.0.0.1:0"}}
        workers: 2
        routes:
          - {{name: all, pool: games}}
        pools:
          games:
            discovery: {{consul: {{service: {SERVICE}}}}}
        """))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "balancer", "run", "--config", str(config),
        cwd=Path(__file__).resolve().parents[2], stderr=asyncio.subprocess.DEVNULL)
    try:
        async def serving() -> bool:
            try:
                async with client.get(f"http://127.0.0.1:{port}/lobby") as resp:
                    return resp.status == 200 and resp.headers.get("X-Backend") == "g1"
            except aiohttp.ClientError:
                return False
        await eventually(serving, "the workers serve the discovered backend", timeout=20)
        mine = list((await registered(client, consul)).values())
        assert [(s["Service"], s["Port"]) for s in mine] == [("edge-balancer", port)]

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert await registered(client, consul) == {}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
