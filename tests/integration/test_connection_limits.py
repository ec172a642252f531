"""limits.max_connections per worker: at the limit the listener stops accepting, so new
connections wait in the kernel backlog (they are not refused) and are served as slots free.
"""

from __future__ import annotations

import asyncio

from tests.conftest import one_pool

REQUEST = b"GET /game HTTP/1.1\r\nHost: a.example\r\n\r\n"


async def start(start_balancer, backends):
    (backend,) = await backends(1)
    lb = await start_balancer(one_pool(
        [backend], top="limits: {max_connections: 2, client_idle_timeout: 10s, header_timeout: 10s}"))
    return lb, backend


async def open_and_ask(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    await writer.drain()
    return reader, writer


async def answered(reader: asyncio.StreamReader, within: float) -> bool:
    """Did a whole 200 response arrive within `within` seconds?"""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), within)
    except asyncio.TimeoutError:
        return False
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await asyncio.wait_for(reader.readexactly(length), within)
    return True


async def test_third_connection_waits_until_a_slot_frees(start_balancer, backends, http):
    lb, backend = await start(start_balancer, backends)
    first = await open_and_ask(lb.port())
    second = await open_and_ask(lb.port())
    assert await answered(first[0], 2.0)
    assert await answered(second[0], 2.0)
    # Both stay open (keep-alive). The third is connected by the kernel but not accepted.
    third = await open_and_ask(lb.port())
    assert not await answered(third[0], 0.4)
    assert backend.count() == 2
    first[1].close()
    assert await answered(third[0], 2.0)  # served as soon as the first one left
    assert backend.count() == 3
    second[1].close()
    third[1].close()
    async with http.get(lb.admin_url + "/metrics") as resp:
        text = await resp.text()
    assert 'balancer_client_connection_limit_reached_total{listener="public"}' in text
    reached = [line for line in text.splitlines()
               if line.startswith('balancer_client_connection_limit_reached_total{listener="public"}')]
    assert float(reached[0].rsplit(" ", 1)[1]) >= 1


async def test_a_burst_is_never_accepted_past_the_limit(start_balancer, backends):
    """Slots are taken at accept: five connections arriving together are served two at a time."""
    lb, backend = await start(start_balancer, backends)
    clients = await asyncio.gather(*(open_and_ask(lb.port()) for _ in range(5)))
    waiting = list(clients)
    while waiting:
        await asyncio.sleep(0.3)
        assert lb.app.listeners["public"].slots <= 2
        done = [c for c in waiting if await answered(c[0], 0.05)]
        assert 1 <= len(done) <= 2, len(done)
        for reader, writer in done:
            writer.close()
            waiting.remove((reader, writer))
    assert backend.count() == 5


async def test_limit_counter_is_exposed_before_the_limit_is_reached(start_balancer, backends, http):
    lb, _ = await start(start_balancer, backends)
    async with http.get(lb.admin_url + "/metrics") as resp:
        text = await resp.text()
    assert "# TYPE balancer_client_connection_limit_reached_total counter" in text
    assert 'balancer_client_connection_limit_reached_total{listener="public"} 0.0' in text
    assert 'balancer_client_connections{listener="public"} 0.0' in text
