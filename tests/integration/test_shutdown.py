"""Graceful shutdown drains WebSockets for up to shutdown_timeout."""

import asyncio
import time

import aiohttp

from tests.conftest import pool_yaml


def live_pool(bs: list, shutdown_timeout: str) -> str:
    return f"""
        shutdown_timeout: {shutdown_timeout}
        routes:
          - {{name: live, pool: live}}
        pools:
          live:
            backends: {pool_yaml(bs)}
        """


async def test_shutdown_waits_for_websockets_then_closes_them(start_balancer, backends, http):
    bs = await backends(1)
    lb = await start_balancer(live_pool(bs, shutdown_timeout="1s"))
    ws = await http.ws_connect(lb.url + "/ws/round")
    await ws.send_str("a")
    assert await ws.receive_str(timeout=2) == "b1:a"
    started = time.monotonic()
    shutdown = asyncio.create_task(lb.app.shutdown())
    await asyncio.sleep(0.3)
    assert not shutdown.done()  # the round is still being played
    await ws.send_str("b")
    assert await ws.receive_str(timeout=2) == "b1:b"
    message = await ws.receive(timeout=3)  # shutdown_timeout passes: closed
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    await asyncio.wait_for(shutdown, 10)
    # It waited for shutdown_timeout, and then did not wait for ever (honest margin above it).
    assert 0.9 < time.monotonic() - started < 10


async def test_shutdown_finishes_early_when_websockets_end(start_balancer, backends, http):
    bs = await backends(1)
    lb = await start_balancer(live_pool(bs, shutdown_timeout="10s"))
    ws = await http.ws_connect(lb.url + "/ws/round")
    await ws.send_str("a")
    await ws.receive_str(timeout=2)
    shutdown = asyncio.create_task(lb.app.shutdown())
    await asyncio.sleep(0.2)
    await ws.close()
    await asyncio.wait_for(shutdown, 8)  # before the 10 s timeout (2 s to spare on a busy machine)
