"""Draining: no new players; open WebSockets stay until they end or drain_timeout passes."""

import asyncio

import aiohttp

from tests.conftest import backends_seen, pool_yaml
from tests.fakes.h2client import H2Client, ws_text
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


async def test_websocket_over_http2_on_a_draining_backend_ends_at_drain_timeout(start_balancer, backends, http):
    """A WebSocket carried by an HTTP/2 stream (RFC 8441) is drained like an HTTP/1.1 one: it
    lives on while the backend drains, and when drain_timeout passes its stream is ended and
    the backend's count goes back to zero; the connection keeps serving other streams."""
    bs = await backends(1)
    lb = await start_balancer(config(bs, drain_timeout="5s"),  # the round below fits, busy or not
                              listeners="listeners:\n  - name: h2c\n    address: 127.0.0.1:0\n    http2: true\n")
    player = await H2Client.open(lb.port("h2c"))
    try:
        await player.until(lambda: player.remote_settings.get(0x8) == 1)
        stream_id = player.start("CONNECT", "/ws/round", [(":protocol", "websocket"),
                                                         ("sec-websocket-version", "13")], end=False)
        ws = player.responses[stream_id]
        player.send_data(stream_id, ws_text("spin"))
        await player.until(lambda: b"b1:spin" in ws.body)
        backend = lb.app.pools["live"].backends["b1"]
        assert backend.websockets == 1
        async with http.post(lb.admin_url + "/admin/pools/live/backends/b1/drain") as resp:
            assert resp.status == 200
        player.send_data(stream_id, ws_text("round still running"))
        await player.until(lambda: b"b1:round still running" in ws.body)
        await player.until(lambda: ws.ended or ws.reset is not None)  # the drain ran out
        assert ws.reset is None  # ended cleanly (END_STREAM), not cut
        await until(lambda: backend.websockets == 0, "the WebSocket no longer counted")
        # A new player's stream on the same connection: nobody new on a draining backend.
        assert (await player.request("GET", "/new-player")).status == 503
    finally:
        player.close()
