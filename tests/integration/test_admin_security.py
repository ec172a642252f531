"""Admin listener security (docs/security.md, "Admin listener"): loopback by default, bearer token on /admin/*,
never reachable through a public listener, and no open proxy towards it or anywhere else.
"""

from __future__ import annotations

import pytest

from balancer.config import AdminConfig
from balancer.config_file import load_config
from tests.conftest import one_pool, pool_yaml
from tests.httpcheck import parse_responses, send_raw

TOKEN_ENV = "TEST_EDGE_ADMIN_TOKEN"
TOKEN = "edge-Secr3t"


async def start(start_balancer, backends, admin: str = "{address: '127.0.0.1:0'}"):
    (backend,) = await backends(1)
    lb = await start_balancer(one_pool([backend], top=f"admin: {admin}"))
    return lb, backend


def test_admin_defaults_to_loopback(tmp_path):
    assert AdminConfig().address.host == "127.0.0.1"
    assert AdminConfig().address.port == 9901
    assert AdminConfig().token_env == "BALANCER_ADMIN_TOKEN"
    # A config that never mentions `admin` gets the same: nothing public by default.
    path = tmp_path / "minimal.yaml"
    path.write_text("listeners: [{name: public, address: '0.0.0.0:8080'}]\n"
                    "routes: [{name: all, pool: web}]\n"
                    "pools: {web: {backends: [{id: b1, address: '127.0.0.1:9'}]}}\n")
    config = load_config(str(path))
    assert (config.admin.address.host, config.admin.address.port) == ("127.0.0.1", 9901)


async def test_admin_socket_is_bound_to_loopback_only(start_balancer, backends):
    lb, _ = await start(start_balancer, backends)
    bound = {sock.getsockname()[0] for sock in lb.app.admin.http.server.sockets}
    assert bound == {"127.0.0.1"}


@pytest.fixture
async def guarded(start_balancer, backends, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return await start(start_balancer, backends, f"{{address: '127.0.0.1:0', token_env: {TOKEN_ENV}}}")


@pytest.mark.parametrize("authorization", [
    pytest.param(None, id="no-header"),
    pytest.param("Bearer wrong", id="wrong-token"),
    pytest.param(f"Bearer {TOKEN}x", id="token-plus-a-char"),
    pytest.param(f"Bearer {TOKEN[:-1]}", id="token-prefix"),
    pytest.param(TOKEN, id="token-without-scheme"),
    pytest.param(f"Basic {TOKEN}", id="basic-scheme"),
    pytest.param("Bearer ", id="empty-token"),
])
async def test_admin_paths_need_the_token(guarded, http, authorization):
    lb, backend = guarded
    headers = {"Authorization": authorization} if authorization else {}
    async with http.get(lb.admin_url + "/admin/pools", headers=headers) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert "pools" not in await resp.json()


async def test_admin_actions_without_the_token_change_nothing(guarded, http):
    lb, backend = guarded
    reloads_before = dict(lb.app.stats.reloads)
    async with http.post(lb.admin_url + f"/admin/pools/web/backends/{backend.name}/drain") as resp:
        assert resp.status == 401
    async with http.post(lb.admin_url + "/admin/reload") as resp:
        assert resp.status == 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    async with http.get(lb.admin_url + "/admin/pools", headers=good) as resp:
        assert resp.status == 200
        (pool,) = (await resp.json())["pools"]
    assert pool["backends"][0]["state"] == "healthy"  # not draining
    assert lb.app.stats.reloads == reloads_before


async def test_token_opens_admin_paths_and_probes_stay_open(guarded, http):
    lb, _ = guarded
    async with http.get(lb.admin_url + "/admin/pools", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 200
        assert [p["name"] for p in (await resp.json())["pools"]] == ["web"]
    # Prometheus and Consul do not carry the token: scrapes and probes are not behind it.
    for path in ("/metrics", "/healthz", "/readyz"):
        async with http.get(lb.admin_url + path) as resp:
            assert resp.status == 200, path


@pytest.mark.parametrize("path", [
    "//admin/pools", "/%61dmin/pools", "/./admin/pools", "/metrics/../admin/pools",
    "/metrics/%2e%2e/admin/pools", "/healthz/..%2fadmin/pools", "/%2Fadmin/pools", "/Admin/pools",
    "/admin%2fpools", "/admin/pools/", "/admin;x/pools",
])
async def test_no_path_trick_reaches_admin_without_the_token(guarded, path):
    """Whatever the router makes of a path, the token check must have seen it first."""
    lb, _ = guarded
    raw = await send_raw(lb.app.admin.port, b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                         % path.encode())
    (answer,) = parse_responses(raw.data)
    assert answer.status in (401, 404), (path, answer.status)
    assert b'"pools"' not in answer.body


@pytest.mark.parametrize("method, path", [
    ("GET", "/admin/pools"), ("POST", "/admin/reload"), ("GET", "/metrics"), ("GET", "/healthz"),
    ("POST", "/admin/pools/web/backends/b1/drain"),
])
async def test_admin_paths_on_a_public_listener_are_routed_not_served(start_balancer, backends, http,
                                                                     method, path):
    lb, backend = await start(start_balancer, backends)
    reloads_before = dict(lb.app.stats.reloads)
    async with http.request(method, lb.url + path) as resp:
        assert resp.status == 200
        assert resp.headers["X-Backend"] == backend.name  # the backend answered, not the admin
    assert backend.count(method, path) == 1
    assert lb.app.stats.reloads == reloads_before
    assert all(b.state().value == "healthy" for p in lb.app.pools.values() for b in p.backends.values())


async def test_admin_paths_without_a_matching_route_get_404(start_balancer, backends, http):
    (backend,) = await backends(1)
    lb = await start_balancer(f"""
        routes:
          - {{name: games, match: {{path_prefix: /games/}}, pool: web}}
        pools:
          web:
            backends: {pool_yaml([backend])}
        """)
    for path in ("/admin/pools", "/metrics"):
        async with http.get(lb.url + path) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "no route"


async def test_public_listener_is_no_proxy_to_the_admin_listener(start_balancer, backends):
    """An absolute-form target naming the admin address (or any host that is no route) is
    refused: the balancer is no open proxy, so no SSRF towards its own admin listener."""
    lb, backend = await start(start_balancer, backends)
    admin = f"127.0.0.1:{lb.app.admin.port}".encode()
    for target in (b"http://" + admin + b"/admin/pools", b"http://evil.example/", b"http://localhost/metrics"):
        raw = await send_raw(lb.port(), b"GET " + target + b" HTTP/1.1\r\nHost: " + admin + b"\r\n\r\n")
        (answer,) = parse_responses(raw.data)
        assert answer.status == 400 and raw.closed
    assert backend.count() == 0
    # A Host header naming the admin address is only a Host: routed like any other request.
    raw = await send_raw(lb.port(), b"GET /admin/pools HTTP/1.1\r\nHost: " + admin + b"\r\nConnection: close\r\n\r\n")
    (answer,) = parse_responses(raw.data)
    assert answer.status == 200 and answer.headers["x-backend"] == backend.name
