"""Draining: no new players; open WebSockets stay until they end or drain_timeout passes."""

import asyncio

import aiohttp

from tests.conftest import backends_seen, pool_yaml
from tests.waiting import HANG_GUARD, until


def config(bs, drain_timeout: str = "1s") -> str:
    return f"""
        routes:
          - {{name: all, pool: live}}
        pools:
          live:
            drain_timeout: {drain_timeout}
            backends: {pool_yaml(bs)}
        """


async def test_drain_and_undrain_through_admin(start_balancer, backends, http):
    bs = await backends(2)
    lb = await start_balancer(config(bs))
    async with http.post(lb.admin_url + "/admin/pools/live/backends/b1/drain") as resp:
        assert resp.status == 200
    for _ in range(6):
        async with http.get(lb.url + "/") as resp:
            assert (await resp.json())["backend"] == "b2"
    async with http.get(lb.admin_url + "/admin/pools") as resp:
        states = {b["id"]: b["state"] for b in (await resp.json())["pools"][0]["backends"]}
    assert states == {"b1": "draining", "b2": "healthy"}
    async with http.post(lb.admin_url + "/admin/pools/live/backends/b1/undrain") as resp:
        assert resp.status == 200
    assert await backends_seen(http, lb.url + "/", 2) == {"b1", "b2"}
    async with http.post(lb.admin_url + "/admin/pools/live/backends/nope/drain") as resp:
        assert resp.status == 404


async def test_websocket_on_a_draining_backend_lives_until_drain_timeout(start_balancer, backends, http):
    bs = await backends(1)
    # Long enough for the round's messages below on a busy machine; the close after it is
    # waited for, not timed.
    lb = await start_balancer(config(bs, drain_timeout="5s"))
    ws = await http.ws_connect(lb.url + "/ws/round")
    await ws.send_str("spin")
    assert await ws.receive_str(timeout=2) == "b1:spin"
    async with http.post(lb.admin_url + "/admin/pools/live/backends/b1/drain") as resp:
        assert resp.status == 200
    async with http.get(lb.url + "/new-player") as resp:
        assert resp.status == 503  # nobody new on a draining backend
        assert resp.headers["Retry-After"] == "1"
    await ws.send_str("round still running")
    assert await ws.receive_str(timeout=HANG_GUARD) == "b1:round still running"
    message = await ws.receive(timeout=HANG_GUARD)  # the drain runs out: the balancer closes it
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    backend = lb.app.pools["live"].backends["b1"]
    await until(lambda: backend.websockets == 0, "the WebSocket no longer counted")
