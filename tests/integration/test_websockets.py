"""WebSockets through the balancer: the upgrade is relayed, then bytes flow both ways."""

import asyncio

import aiohttp

from tests.conftest import pool_yaml
from tests.waiting import until


def ws_config(bs, extra: str = "") -> str:
    return f"""
        routes:
          - {{name: live, pool: live}}
        pools:
          live:
            balance: least_conn
            timeouts: {{websocket_idle: 2s}}
            backends: {pool_yaml(bs)}
{extra}
        """


async def test_echo_through_the_balancer_text_and_binary(start_balancer, backends, http):
    bs = await backends(1)
    lb = await start_balancer(ws_config(bs))
    async with http.ws_connect(lb.url + "/ws/table-7") as ws:
        await ws.send_str("bet 10")
        assert (await ws.receive_str(timeout=2)) == "b1:bet 10"
        payload = bytes(range(256)) * 1000  # 256 KB: several reads each way, backpressure on
        await ws.send_bytes(payload)
        assert (await ws.receive_bytes(timeout=5)) == payload
    assert bs[0].count("WS") == 1


async def test_open_websockets_are_counted_and_balanced(start_balancer, backends, http):
    bs = await backends(2)
    lb = await start_balancer(ws_config(bs))
    sockets = []
    for _ in range(4):
        ws = await http.ws_connect(lb.url + "/ws/x")
        await ws.send_str("hi")
        await ws.receive_str(timeout=2)
        sockets.append(ws)
    pool = lb.app.pools["live"]
    counts = sorted(b.websockets for b in pool.backends.values())
    assert counts == [2, 2]  # least_conn counts open WebSockets: two each
    async with http.get(lb.admin_url + "/metrics") as resp:
        text = await resp.text()
    assert 'balancer_backend_websockets{backend="b1",pool="live"} 2.0' in text
    for ws in sockets:
        await ws.close()
    await until(lambda: all(b.websockets == 0 for b in pool.backends.values()), "no WebSocket counted")
    assert all(b.active_requests == 0 for b in pool.backends.values())


async def test_idle_websocket_is_closed_after_websocket_idle(start_balancer, backends, http):
    bs = await backends(1)
    lb = await start_balancer(ws_config(bs).replace("websocket_idle: 2s", "websocket_idle: 300ms"))
    async with http.ws_connect(lb.url + "/ws/idle") as ws:
        message = await ws.receive(timeout=3)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    backend = lb.app.pools["live"].backends["b1"]
    await until(lambda: backend.websockets == 0 and not backend.tunnels, "the idle WebSocket uncounted")


async def test_traffic_keeps_a_websocket_open_past_websocket_idle(start_balancer, backends, http):
    # Frames every 100 ms for three times the 1 s idle limit: each resets it, in either
    # direction (the echo comes back from the backend).
    bs = await backends(1)
    lb = await start_balancer(ws_config(bs).replace("websocket_idle: 2s", "websocket_idle: 1s"))
    async with http.ws_connect(lb.url + "/ws/busy") as ws:
        for n in range(30):
            await ws.send_str(f"bet {n}")
            assert (await ws.receive_str(timeout=2)) == f"b1:bet {n}"
            await asyncio.sleep(0.1)
        # ... and once quiet, it is closed after all.
        message = await ws.receive(timeout=5)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)


async def test_backend_refusing_the_upgrade_answers_normally(start_balancer, backends):
    bs = await backends(1)
    lb = await start_balancer(ws_config(bs))
    answer = await lb.raw(
        b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        read_timeout=1.0)
    assert answer.startswith(b"HTTP/1.1 200")  # the backend's /plain is not a WebSocket


async def test_upgrade_with_a_body_is_refused(start_balancer, backends):
    bs = await backends(1)
    lb = await start_balancer(ws_config(bs))
    answer = await lb.raw(
        b"GET /ws/x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 5\r\n\r\nhello")
    assert answer.startswith(b"HTTP/1.1 400")
    assert bs[0].count() == 0 and bs[0].count("WS") == 0
