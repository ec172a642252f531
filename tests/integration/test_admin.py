"""The admin listener (docs/monitoring.md) and the metrics it exposes, through the real balancer."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import Running, Samples, backends_seen, metric_samples, one_pool, pool_yaml
from tests.fakes.backends import free_port
from tests.waiting import HANG_GUARD, eventually

BACKEND_KEYS = {"id", "address", "region", "weight", "source", "state", "active_requests", "websockets",
                # added for the status page (docs/operations.md, "Status page and /status")
                "slow_start", "effective_weight", "last_minute", "last_check",
                # why it last could not be reached (a connect or a health check)
                "last_failure"}
POOL_KEYS = {"name", "backends", "eligible_backends", "panic", "window_seconds"}


async def scrape(http: aiohttp.ClientSession, lb: Running) -> Samples:
    """Every sample as {(name, frozenset(labels)): value}."""
    async with http.get(lb.admin_url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return metric_samples(await resp.text())


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def pools_doc(http: aiohttp.ClientSession, lb: Running, headers: dict | None = None) -> dict:
    async with http.get(lb.admin_url + "/admin/pools", headers=headers) as resp:
        assert resp.status == 200
        return await resp.json()


def backend_doc(doc: dict, pool: str, backend_id: str) -> dict:
    (found,) = [b for p in doc["pools"] if p["name"] == pool for b in p["backends"] if b["id"] == backend_id]
    return found




# -- health and readiness --------------------------------------------------------------------------


async def test_healthz_is_200_while_alive(start_balancer, backends, http):
    lb = await start_balancer(one_pool(await backends(1)))
    async with http.get(lb.admin_url + "/healthz") as resp:
        assert resp.status == 200


async def test_readyz_follows_whether_every_route_has_an_eligible_backend(start_balancer, backends, http):
    (b,) = await backends(1)
    lb = await start_balancer(one_pool([b]))
    async with http.get(lb.admin_url + "/readyz") as resp:
        assert resp.status == 200

    async with http.post(lb.admin_url + "/admin/pools/web/backends/b1/drain") as resp:
        assert resp.status == 200
    async with http.get(lb.admin_url + "/readyz") as resp:
        assert resp.status == 503
        reason = await resp.text()
    assert "all" in reason and "web" in reason  # names the route and the pool that cannot serve

    async with http.post(lb.admin_url + "/admin/pools/web/backends/b1/undrain") as resp:
        assert resp.status == 200
    async with http.get(lb.admin_url + "/readyz") as resp:
        assert resp.status == 200


async def test_readyz_is_503_when_a_pool_has_no_backend_that_answers(start_balancer, backends, http):
    (b,) = await backends(1)
    closed = free_port()
    lb = await start_balancer(f"""
        routes:
          - {{name: lobby, match: {{path_prefix: /lobby}}, pool: web}}
          - {{name: cashier, pool: dead}}
        pools:
          web:
            backends: {pool_yaml([b])}
          dead:
            backends: [{{id: gone, address: '127.0.0.1:{closed}'}}]
            health_check: {{tcp: true, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1}}
        """)

    async def not_ready() -> bool:
        async with http.get(lb.admin_url + "/readyz") as resp:
            return resp.status == 503 and "cashier" in await resp.text()

    assert await eventually(not_ready)


# -- /admin/pools -----------------------------------------------------------------------------------


async def test_admin_pools_document_has_the_contract_shape(start_balancer, backends, http):
    eu, it = await backends(("eu-1", "eu-west"), ("it-1", "eu-south"))
    eu.mode = "hang"
    eu.hang_seconds = 1.0
    lb = await start_balancer(f"""
        routes:
          - {{name: all, pool: games}}
        pools:
          games:
            balance: round_robin
            backends:
              - {{id: eu-1, address: '{eu.address}', region: eu-west, weight: 3}}
              - {{id: it-1, address: '{it.address}', region: eu-south}}
        """)
    doc = await pools_doc(http, lb)
    assert set(doc) == {"pools"}
    (pool,) = doc["pools"]
    assert set(pool) == POOL_KEYS and pool["name"] == "games"
    assert pool["eligible_backends"] == 2 and pool["panic"] is False
    for entry in pool["backends"]:
        assert set(entry) == BACKEND_KEYS
    assert backend_doc(doc, "games", "eu-1") == {
        "id": "eu-1", "address": eu.address, "region": "eu-west", "weight": 3, "source": "static",
        "state": "healthy", "active_requests": 0, "websockets": 0,
        "slow_start": False, "effective_weight": 3,
        "last_minute": {"requests_per_second": 0.0, "error_share": None, "p99_seconds": None},
        "last_check": None,  # no health_check configured
        "last_failure": None,
    }
    assert backend_doc(doc, "games", "it-1")["weight"] == 1

    # A request held by eu-1 shows as in flight there.
    slow = asyncio.ensure_future(http.get(lb.url + "/slow"))
    try:
        async def in_flight() -> bool:
            return backend_doc(await pools_doc(http, lb), "games", "eu-1")["active_requests"] == 1
        assert await eventually(in_flight)
    finally:
        async with await slow as resp:
            assert resp.status == 200
    assert backend_doc(await pools_doc(http, lb), "games", "eu-1")["active_requests"] == 0


# -- drain / undrain --------------------------------------------------------------------------------


async def test_drain_takes_a_backend_out_of_rotation_and_undrain_brings_it_back(start_balancer, backends, http):
    b1, b2 = await backends(2)
    lb = await start_balancer(one_pool([b1, b2]))
    async with http.post(lb.admin_url + "/admin/pools/web/backends/b1/drain") as resp:
        assert resp.status == 200
        assert (await resp.json())["result"] == "draining"
    assert backend_doc(await pools_doc(http, lb), "web", "b1")["state"] == "draining"
    for _ in range(6):
        async with http.get(lb.url + "/") as resp:
            assert (await resp.json())["backend"] == "b2"
    assert b1.count() == 0

    async with http.post(lb.admin_url + "/admin/pools/web/backends/b1/undrain") as resp:
        assert resp.status == 200
    assert backend_doc(await pools_doc(http, lb), "web", "b1")["state"] == "healthy"
    assert await backends_seen(http, lb.url + "/", 2) == {"b1", "b2"}


@pytest.mark.parametrize("path", ["/admin/pools/nope/backends/b1/drain", "/admin/pools/web/backends/nope/drain",
                                  "/admin/pools/web/backends/nope/undrain"])
async def test_drain_of_an_unknown_pool_or_backend_is_404(start_balancer, backends, http, path):
    lb = await start_balancer(one_pool(await backends(1)))
    async with http.post(lb.admin_url + path) as resp:
        assert resp.status == 404
        assert "error" in await resp.json()


# -- bearer token --------------------------------------------------------------------------------------


async def test_admin_needs_the_bearer_token_when_its_variable_is_set(start_balancer, backends, http, monkeypatch):
    monkeypatch.setenv("TEST_SPINE_ADMIN_TOKEN", "s3cret-token")
    (b,) = await backends(1)
    lb = await start_balancer(one_pool([b], top="admin: {address: '127.0.0.1:0', token_env: TEST_SPINE_ADMIN_TOKEN}"))
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"},
                    {"Authorization": "Basic czNjcmV0LXRva2Vu"}):
        async with http.get(lb.admin_url + "/admin/pools", headers=headers) as resp:
            assert resp.status == 401, headers
        async with http.post(lb.admin_url + "/admin/pools/web/backends/b1/drain", headers=headers) as resp:
            assert resp.status == 401, headers
    assert lb.app.pools["web"].backends["b1"].draining is False  # the refused drain did nothing

    good = {"Authorization": "Bearer s3cret-token"}
    assert (await pools_doc(http, lb, good))["pools"][0]["name"] == "web"
    async with http.post(lb.admin_url + "/admin/pools/web/backends/b1/drain", headers=good) as resp:
        assert resp.status == 200
    # Probes and scrapes are not behind the token: Consul and Prometheus do not carry it.
    for path in ("/healthz", "/metrics"):
        async with http.get(lb.admin_url + path) as resp:
            assert resp.status == 200, path


async def test_admin_is_open_when_the_token_variable_is_unset(start_balancer, backends, http, monkeypatch):
    monkeypatch.delenv("TEST_SPINE_ADMIN_TOKEN", raising=False)
    lb = await start_balancer(one_pool(await backends(1),
                                       top="admin: {address: '127.0.0.1:0', token_env: TEST_SPINE_ADMIN_TOKEN}"))
    assert (await pools_doc(http, lb))["pools"][0]["name"] == "web"


# -- /metrics ------------------------------------------------------------------------------------------


async def test_metrics_count_requests_durations_and_upstream_errors(start_balancer, backends, http):
    (b,) = await backends(1)
    closed = free_port()
    lb = await start_balancer(f"""
        routes:
          - {{name: cashier, match: {{path_prefix: /cashier}}, pool: dead}}
          - {{name: lobby, pool: web}}
        pools:
          web:
            backends: {pool_yaml([b])}
          dead:
            backends: [{{id: gone, address: '127.0.0.1:{closed}'}}]
        """)
    for _ in range(3):
        async with http.get(lb.url + "/lobby") as resp:
            assert resp.status == 200
    async with http.post(lb.url + "/bet", data=b"10") as resp:
        assert resp.status == 200
    async with http.get(lb.url + "/cashier") as resp:
        assert resp.status == 502

    samples = await scrape(http, lb)
    requests = "balancer_requests_total"
    assert value(samples, requests, route="lobby", pool="web", backend="b1", method="GET", code="200") == 3
    assert value(samples, requests, route="lobby", pool="web", backend="b1", method="POST", code="200") == 1
    assert value(samples, requests, route="cashier", pool="dead", backend="gone", method="GET", code="502") == 1

    hist = "balancer_request_duration_seconds"
    ok = {"route": "lobby", "pool": "web", "code_class": "2xx"}
    assert value(samples, hist + "_count", **ok) == 4
    assert value(samples, hist + "_bucket", le="+Inf", **ok) == 4
    assert value(samples, hist + "_sum", **ok) > 0
    buckets = sorted(((float(dict(labels)["le"]), v) for (name, labels), v in samples.items()
                      if name == hist + "_bucket" and dict(labels).items() >= ok.items()))
    assert len(buckets) > 5
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert value(samples, hist + "_count", route="cashier", pool="dead", code_class="5xx") == 1

    errors = "balancer_upstream_errors_total"
    assert value(samples, errors, pool="dead", backend="gone", kind="connect") == 1
    assert value(samples, errors, pool="web", backend="b1", kind="connect") is None


async def test_metrics_show_client_connections_and_active_requests(start_balancer, backends, http):
    (b,) = await backends(1)
    b.mode = "hang"
    b.hang_seconds = 0.8
    lb = await start_balancer(one_pool([b]))
    connections = "balancer_client_connections"
    active = "balancer_backend_active_requests"

    writers = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
        writer.write(b"GET /slow HTTP/1.1\r\nHost: casino.test\r\n\r\n")
        writers.append((reader, writer))

    async def two_in_flight() -> bool:
        samples = await scrape(http, lb)
        return (value(samples, connections, listener="public") == 2
                and value(samples, active, pool="web", backend="b1") == 2)
    assert await eventually(two_in_flight)

    for reader, writer in writers:
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), HANG_GUARD)).startswith(b"HTTP/1.1 200")
        writer.close()

    async def all_done() -> bool:
        samples = await scrape(http, lb)
        return (value(samples, connections, listener="public") == 0
                and value(samples, active, pool="web", backend="b1") == 0)
    assert await eventually(all_done)
