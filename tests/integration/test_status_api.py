"""GET /status and the metrics added for the status page and the alert rules, through the
real balancer (docs/monitoring.md)."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from tests.conftest import Running, metric_samples, pool_yaml
from tests.fakes.consul import FakeConsul
from tests.integration.test_workers import start_process, two_workers_config

BOUND = 30.0  # generous: health checks and Consul retries on a busy machine


async def status(http: aiohttp.ClientSession, admin_url: str) -> dict:
    async with http.get(admin_url + "/status") as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        return await resp.json()


async def metrics(http: aiohttp.ClientSession, lb: Running) -> dict:
    async with http.get(lb.admin_url + "/metrics") as resp:
        return metric_samples(await resp.text())


def backend(doc: dict, pool: str, backend_id: str) -> dict:
    (found,) = [b for p in doc["pools"] if p["name"] == pool for b in p["backends"] if b["id"] == backend_id]
    return found


def pool(doc: dict, name: str) -> dict:
    (found,) = [p for p in doc["pools"] if p["name"] == name]
    return found


async def until(what: str, check) -> None:
    deadline = time.monotonic() + BOUND
    while not await check():
        assert time.monotonic() < deadline, f"not within {BOUND}s: {what}"
        await asyncio.sleep(0.05)


async def test_status_tells_instance_listeners_traffic_checks_and_reloads(start_balancer, backends, http):
    g1, g2 = await backends(("g1", "eu-west"), ("g2", "eu-south"))
    lb = await start_balancer(f"""
        routes:
          - {{name: all, pool: games}}
        pools:
          games:
            balance: round_robin
            backends: {pool_yaml([g1, g2])}
            health_check: {{path: /health, interval: 0.2s, timeout: 1s, unhealthy_threshold: 1}}
        """)
    # Round robin: four requests each; g2 answers them all 503 (its health check still passes).
    g2.mode = "status:503"
    for _ in range(8):
        async with http.get(lb.url + "/play") as resp:
            await resp.read()
    doc = await status(http, lb.admin_url)

    instance = doc["instance"]
    assert instance["workers"] == 1 and instance["config_file"] == str(lb.path)
    assert instance["last_reload"] is None and instance["admin_token_required"] is False
    assert instance["version"] and 0 <= instance["uptime_seconds"] < 3600
    (listener,) = doc["listeners"]
    assert listener["name"] == "public" and listener["address"] == f"127.0.0.1:{lb.port()}"
    assert listener["max_connections"] == 20000 and listener["connection_limit_reached"] == 0
    games = pool(doc, "games")
    assert games["eligible_backends"] == 2 and games["panic"] is False and games["window_seconds"] > 0
    one, two = backend(doc, "games", "g1")["last_minute"], backend(doc, "games", "g2")["last_minute"]
    assert one["error_share"] == 0.0 and two["error_share"] == 1.0
    assert one["requests_per_second"] * games["window_seconds"] == pytest.approx(4, rel=0.01)
    assert 0 < two["p99_seconds"] < 1.0
    assert doc["consul"] == []

    # The health check's last result, passed then failed.
    async def checked(ok: bool) -> bool:
        check = backend(await status(http, lb.admin_url), "games", "g1")["last_check"]
        return check is not None and check["ok"] is ok
    await until("a passed check", lambda: checked(True))
    assert backend(await status(http, lb.admin_url), "games", "g1")["last_check"]["detail"] == "status 200"
    g1.mode = "error500"
    await until("a failed check", lambda: checked(False))
    doc = await status(http, lb.admin_url)
    assert backend(doc, "games", "g1")["last_check"]["detail"].startswith("status 500")
    await until("g1 unhealthy", lambda: _state(http, lb, "g1", "unhealthy"))
    samples = await metrics(http, lb)
    assert samples[("balancer_pool_eligible_backends", frozenset({("pool", "games")}))] == 1
    assert samples[("balancer_pool_panic_mode", frozenset({("pool", "games")}))] == 0

    # A refused reload, then a good one: in /status and in the metrics.
    good = lb.path.read_text()
    lb.path.write_text(good.replace("balance: round_robin", "balance: sideways"))
    assert await lb.app.reload()
    reload = (await status(http, lb.admin_url))["instance"]["last_reload"]
    assert reload["result"] == "failure" and "pools.games.balance" in reload["errors"][0]
    samples = await metrics(http, lb)
    assert samples[("balancer_config_last_reload_successful", frozenset())] == 0
    loaded_before = samples[("balancer_config_last_reload_success_timestamp_seconds", frozenset())]
    lb.path.write_text(good)
    assert await lb.app.reload() == []
    assert (await status(http, lb.admin_url))["instance"]["last_reload"]["result"] == "success"
    samples = await metrics(http, lb)
    assert samples[("balancer_config_last_reload_successful", frozenset())] == 1
    assert samples[("balancer_config_last_reload_success_timestamp_seconds", frozenset())] > loaded_before
    (info,) = [k for k in samples if k[0] == "balancer_build_info"]
    assert dict(info[1])["version"] == instance["version"]


async def _state(http: aiohttp.ClientSession, lb: Running, backend_id: str, state: str) -> bool:
    return backend(await status(http, lb.admin_url), "games", backend_id)["state"] == state


async def test_status_reads_without_the_admin_token_that_admin_pools_needs(start_balancer, backends, http,
                                                                             monkeypatch):
    monkeypatch.setenv("STATUS_API_TEST_TOKEN", "t0ken")
    (b,) = await backends(1)
    lb = await start_balancer(f"""
        admin: {{address: 127.0.0.1:0, token_env: STATUS_API_TEST_TOKEN}}
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            backends: {pool_yaml([b])}
        """)
    doc = await status(http, lb.admin_url)
    assert doc["instance"]["admin_token_required"] is True
    assert backend(doc, "web", "b1")["state"] == "healthy"
    async with http.get(lb.admin_url + "/admin/pools") as resp:
        assert resp.status == 401
    async with http.get(lb.admin_url + "/admin/pools", headers={"Authorization": "Bearer t0ken"}) as resp:
        assert resp.status == 200
        admin_doc = await resp.json()
    assert backend(admin_doc, "web", "b1").keys() == backend(doc, "web", "b1").keys()
    async with http.post(lb.admin_url + "/admin/pools/web/backends/b1/drain") as resp:
        assert resp.status == 401


async def test_status_and_metrics_show_a_consul_outage(start_balancer, backends, http, consul: FakeConsul):
    (t1,) = await backends("t1")
    consul.add_instance("tables", "t1", address="127.0.0.1", port=t1.port)
    lb = await start_balancer(f"""
        consul: {{address: {consul.address}, wait: 1s}}
        routes:
          - {{name: all, pool: tables}}
        pools:
          tables:
            discovery:
              consul: {{service: tables}}
        """)

    async def watch() -> dict:
        (found,) = (await status(http, lb.admin_url))["consul"]
        return found

    async def answered() -> bool:
        return (await watch())["last_success"] is not None
    await until("a first Consul answer", answered)
    seen = await watch()
    assert seen["pool"] == "tables" and seen["service"] == "tables"
    assert seen["failing"] is False and seen["outage_since"] is None
    assert backend(await status(http, lb.admin_url), "tables", "t1")["source"] == "consul"

    consul.fail()
    failed_at = time.time()

    async def failing() -> bool:
        return (await watch())["failing"]
    await until("the outage", failing)
    seen = await watch()
    assert seen["failures"] >= 1 and failed_at - 5 <= seen["outage_since"] <= time.time()
    samples = await metrics(http, lb)
    assert samples[("balancer_consul_watch_failing", frozenset({("service", "tables")}))] == 1

    consul.recover()

    async def recovered() -> bool:
        return not (await watch())["failing"]
    await until("the recovery", recovered)
    samples = await metrics(http, lb)
    assert samples[("balancer_consul_watch_failing", frozenset({("service", "tables")}))] == 0


async def test_with_two_workers_status_sums_them_and_knows_their_port(backends, tmp_path):
    bs = await backends(2)
    config = two_workers_config(tmp_path, bs)
    proc, port, admin, _ = await start_process(config)
    try:
        for _ in range(40):  # fresh connections: the kernel spreads them over both workers
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/") as resp:
                    assert resp.status == 200
        async with aiohttp.ClientSession() as session:
            doc = await status(session, admin)
        assert doc["instance"]["workers"] == 2
        (listener,) = doc["listeners"]
        assert listener["address"] == f"127.0.0.1:{port}" and listener["max_connections"] == 40000
        window = pool(doc, "web")["window_seconds"]
        rates = [b["last_minute"]["requests_per_second"] for b in pool(doc, "web")["backends"]]
        assert sum(rates) * window == pytest.approx(40, rel=0.01)  # both workers' requests
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_a_cross_origin_post_cannot_drain_through_a_browser(start_balancer, backends, http):
    """Without a token, a page elsewhere could otherwise POST to the admin listener through
    the operator's browser (no CORS preflight for a plain POST)."""
    (b,) = await backends(1)
    lb = await start_balancer(f"""
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            backends: {pool_yaml([b])}
        """)
    drain = lb.admin_url + "/admin/pools/web/backends/b1/drain"
    for origin in ("http://casino-phish.example", "null", lb.admin_url.replace("127.0.0.1", "localhost")):
        async with http.post(drain, headers={"Origin": origin}) as resp:
            assert resp.status == 403 and (await resp.json())["error"] == "cross-origin request refused"
        async with http.post(lb.admin_url + "/admin/reload", headers={"Origin": origin}) as resp:
            assert resp.status == 403
    assert backend(await status(http, lb.admin_url), "web", "b1")["state"] == "healthy"
    assert lb.app.last_reload is None
    # The page's own origin, and a script without any Origin, may.
    async with http.post(drain, headers={"Origin": lb.admin_url}) as resp:
        assert resp.status == 200
    async with http.post(lb.admin_url + "/admin/pools/web/backends/b1/undrain") as resp:
        assert resp.status == 200
