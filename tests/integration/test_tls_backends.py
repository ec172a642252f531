"""TLS from the balancer to a pool's backends (`pools.NAME.tls`): verified against a CA with a
server name, client certificates (mTLS), sessions resumed, a certificate that does not verify
is a connect failure (retried, counted, shown with its reason), health checks and WebSockets
over TLS, and backends found through Consul. Backends are real aiohttp servers serving TLS
with certificates from trustme."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from tests.conftest import metric_samples
from tests.fakes.backends import Backend
from tests.pki import Pki

NAME = "games.internal"
SETTLE = 10.0  # hang guard for "eventually"; never a performance claim


@pytest.fixture
def backend_pki(new_ca) -> Pki:
    """The CA of the backends' certificates (the pool's `tls.ca`)."""
    return new_ca()


@pytest.fixture
def edge_pki(new_ca) -> Pki:
    """The CA of the balancer's own client certificates (what mTLS backends trust)."""
    return new_ca()


@pytest.fixture
async def tls_backends():
    made: list[Backend] = []

    async def make(name: str, context) -> Backend:
        backend = Backend(name, tls=context)
        await backend.start()
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.stop()


def tls_pool(backends: list[Backend], tls: str, extra: str = "") -> str:
    items = ", ".join(f"{{id: {b.name}, address: '{b.address}'}}" for b in backends)
    return f"""
        routes:
          - {{name: all, pool: games}}
        pools:
          games:
            backends: [{items}]
            tls: {tls}
            {extra}
        """


async def pools_doc(lb, http: aiohttp.ClientSession) -> dict:
    async with http.get(f"{lb.admin_url}/admin/pools") as resp:
        return {b["id"]: b for p in (await resp.json())["pools"] for b in p["backends"]}


async def test_verified_tls_to_backends_with_keep_alive_and_resumed_sessions(
        start_balancer, tls_backends, backend_pki, http):
    good = await tls_backends("g1", backend_pki.server_context(NAME))
    lb = await start_balancer(tls_pool([good], f"{{ca: {backend_pki.ca_file}, server_name: {NAME}}}"))
    for _ in range(5):
        async with http.get(f"{lb.url}/lobby") as resp:
            assert resp.status == 200
            assert (await resp.json())["backend"] == "g1"
    # Keep-alive: five requests, one TLS connection (the backend sees one handshake's session).
    assert good.count() == 5
    assert good.tls_sessions_reused == [False] * 5
    # A backend that closes after each answer makes every request a new connection: after the
    # first, each resumes the previous session (no full handshake).
    good.mode = "close"
    for _ in range(4):
        async with http.get(f"{lb.url}/lobby") as resp:
            assert resp.status == 200
    assert good.tls_sessions_reused[5:] == [False, True, True, True] or \
        good.tls_sessions_reused[6:] == [True, True, True]


async def test_a_certificate_that_does_not_verify_is_a_connect_failure(
        start_balancer, tls_backends, backend_pki, new_ca, http, caplog):
    rogue_ca = new_ca()  # a certificate with the right name, from a CA not trusted
    good = await tls_backends("good", backend_pki.server_context(NAME))
    rogue = await tls_backends("rogue", rogue_ca.server_context(NAME))
    lb = await start_balancer(tls_pool(
        [good, rogue], f"{{ca: {backend_pki.ca_file}, server_name: {NAME}}}",
        "outlier: {consecutive_failures: 3, base_ejection: 1m}\n            balance: round_robin"))
    caplog.set_level(logging.WARNING, "balancer.upstream")
    # Every request succeeds: a connect failure is retried on the other backend.
    for _ in range(8):
        async with http.get(f"{lb.url}/bet") as resp:
            assert resp.status == 200
            assert (await resp.json())["backend"] == "good"
    assert rogue.count() == 0  # nothing was ever sent to it, in TLS or in plain text
    doc = await pools_doc(lb, http)
    assert "certificate not accepted" in doc["rogue"]["last_failure"]["reason"]
    assert doc["rogue"]["state"] == "ejected"  # counted by outlier detection
    assert doc["good"]["last_failure"] is None
    assert any("rogue" in r.message and "certificate" in r.message for r in caplog.records)
    async with http.get(f"{lb.admin_url}/metrics") as resp:
        samples = metric_samples(await resp.text())
    errors = samples[("balancer_upstream_errors_total",
                      frozenset({("pool", "games"), ("backend", "rogue"), ("kind", "connect")}))]
    assert errors >= 3


async def test_a_wrong_server_name_is_refused(start_balancer, tls_backends, backend_pki, http):
    other = await tls_backends("other", backend_pki.server_context("other.internal"))
    lb = await start_balancer(tls_pool([other], f"{{ca: {backend_pki.ca_file}, server_name: {NAME}}}"))
    async with http.get(f"{lb.url}/") as resp:
        assert resp.status == 502
    assert other.count() == 0
    reason = (await pools_doc(lb, http))["other"]["last_failure"]["reason"]
    assert "certificate not accepted" in reason and "ostname" in reason  # Hostname mismatch


async def test_the_backend_address_is_the_name_verified_without_server_name(
        start_balancer, tls_backends, backend_pki, http):
    by_ip = await tls_backends("ip", backend_pki.server_context("127.0.0.1"))
    lb = await start_balancer(tls_pool([by_ip], f"{{ca: {backend_pki.ca_file}}}"))
    async with http.get(f"{lb.url}/") as resp:
        assert resp.status == 200


async def test_a_plain_http_backend_is_a_failure_not_a_downgrade(start_balancer, backends, backend_pki, http):
    (plain,) = await backends(1)
    lb = await start_balancer(tls_pool([plain], f"{{ca: {backend_pki.ca_file}, server_name: {NAME}}}"))
    async with http.get(f"{lb.url}/") as resp:
        assert resp.status == 502
    assert plain.count() == 0
    assert (await pools_doc(lb, http))[plain.name]["last_failure"]["reason"].startswith("TLS")


async def test_mtls_to_backends(start_balancer, tls_backends, backend_pki, edge_pki, http):
    strict = await tls_backends("strict", backend_pki.server_context(NAME, client_ca=edge_pki))
    cert, key = edge_pki.pair("edge.casino.example", common_name="edge.casino.example")
    lb = await start_balancer(tls_pool(
        [strict], f"{{ca: {backend_pki.ca_file}, server_name: {NAME}, certificate: {cert}, key: {key}}}"))
    async with http.get(f"{lb.url}/wallet") as resp:
        assert resp.status == 200
        assert "commonName=edge.casino.example" in (await resp.json())["peer_cert"]
    # Without a client certificate the same backend refuses the balancer.
    await lb.reload_with(tls_pool([strict], f"{{ca: {backend_pki.ca_file}, server_name: {NAME}}}"))
    async with http.get(f"{lb.url}/wallet") as resp:
        assert resp.status == 502
    assert strict.count() == 1


async def test_verify_false_connects_and_warns_at_every_load(
        start_balancer, tls_backends, new_ca, http, caplog):
    anyone = await tls_backends("anyone", new_ca().server_context("whatever.example"))
    caplog.set_level(logging.WARNING, "balancer.tls")
    lb = await start_balancer(tls_pool([anyone], "{verify: false}"))
    async with http.get(f"{lb.url}/") as resp:
        assert resp.status == 200
    assert await lb.reload_with(tls_pool([anyone], "{verify: false}")) == []
    warnings = [r for r in caplog.records if "NOT verified" in r.message]
    assert len(warnings) == 2


async def wait_state(lb, http, backend_id: str, state: str) -> dict:
    async with asyncio.timeout(SETTLE):
        while True:
            doc = (await pools_doc(lb, http))[backend_id]
            if doc["state"] == state:
                return doc
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("check", ["{path: /health", "{tcp: true"])
async def test_health_checks_over_tls(start_balancer, tls_backends, backend_pki, new_ca, http, check):
    good = await tls_backends("good", backend_pki.server_context(NAME))
    rogue = await tls_backends("rogue", new_ca().server_context(NAME))
    health = f"health_check: {check}, interval: 50ms, timeout: 2s, unhealthy_threshold: 2, healthy_threshold: 1}}"
    lb = await start_balancer(tls_pool([good, rogue], f"{{ca: {backend_pki.ca_file}, server_name: {NAME}}}", health))
    doc = await wait_state(lb, http, "rogue", "unhealthy")
    assert doc["last_failure"]["reason"].startswith("health check: TLS: certificate not accepted")
    assert (await pools_doc(lb, http))["good"]["state"] == "healthy"
    if "path" in check:
        assert good.count("GET", "/health") == 0  # /health is answered by its own handler
    # The rogue backend now presents a certificate the pool's CA signed: it comes back.
    await rogue.stop()
    rogue.tls = backend_pki.server_context(NAME)
    await rogue.start(rogue.port)
    await wait_state(lb, http, "rogue", "healthy")


async def test_websockets_over_tls_on_both_sides(start_balancer, tls_backends, backend_pki, new_ca, http):
    listener_pki = new_ca()
    cert, key = listener_pki.pair("casino.example.com")
    game = await tls_backends("game", backend_pki.server_context(NAME))
    listeners = f"""listeners:
  - name: public
    address: 127.0.0.1:0
    tls: {{certificate: {cert}, key: {key}}}
"""
    lb = await start_balancer(tls_pool([game], f"{{ca: {backend_pki.ca_file}, server_name: {NAME}}}"),
                              listeners=listeners)
    url = f"wss://127.0.0.1:{lb.port()}/ws/table-7"
    async with http.ws_connect(url, ssl=listener_pki.client_context(),
                               server_hostname="casino.example.com") as ws:
        for n in range(3):
            await ws.send_str(f"bet {n}")
            assert (await ws.receive_str()) == f"game:bet {n}"
        await ws.send_bytes(b"\x00\xff" * 5000)
        assert (await ws.receive_bytes()) == b"\x00\xff" * 5000
        doc = await pools_doc(lb, http)
        assert doc["game"]["websockets"] == 1


async def test_consul_discovered_backends_use_the_pool_tls(
        start_balancer, tls_backends, backend_pki, consul, http):
    found = await tls_backends("found", backend_pki.server_context(NAME))
    consul.add_instance("games", "found", address="127.0.0.1", port=found.port)
    lb = await start_balancer(f"""
        consul: {{address: "{consul.address}", wait: 1s}}
        routes:
          - {{name: all, pool: games}}
        pools:
          games:
            discovery: {{consul: {{service: games}}}}
            tls: {{ca: {backend_pki.ca_file}, server_name: {NAME}}}
        """)
    async with asyncio.timeout(SETTLE):
        while "found" not in await pools_doc(lb, http):
            await asyncio.sleep(0.05)
    async with http.get(f"{lb.url}/") as resp:
        assert resp.status == 200
        assert (await resp.json())["backend"] == "found"
    assert found.tls_sessions_reused == [False]


async def test_shadow_copies_to_a_tls_pool_go_over_tls(start_balancer, backends, tls_backends, backend_pki, http):
    (live,) = await backends(1)
    shadow = await tls_backends("shadow", backend_pki.server_context(NAME))
    lb = await start_balancer(f"""
        routes:
          - {{name: games, pool: live, mirror: {{pool: shadow, percent: 100}}}}
        pools:
          live: {{backends: [{{id: live, address: '{live.address}'}}]}}
          shadow:
            backends: [{{id: shadow, address: '{shadow.address}'}}]
            tls: {{ca: {backend_pki.ca_file}, server_name: {NAME}}}
        """)
    async with http.get(f"{lb.url}/spin") as resp:
        assert resp.status == 200
    async with asyncio.timeout(SETTLE):
        while shadow.count() == 0:
            await asyncio.sleep(0.02)
    assert shadow.tls_sessions_reused == [False]  # it arrived over TLS
