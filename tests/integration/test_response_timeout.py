"""timeouts.response (docs/configuration.md): the response head is due within it from sending
the request (else 504); once the body streams, the backend may not go silent for longer than
it, or the response is cut. A body that keeps flowing may take longer than it in total."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tests.conftest import one_pool
from tests.fakes.rawhttp import RawBackend, read_head


@dataclass
class PacedBackend(RawBackend):
    """Answers one chunked response whose pieces leave `gaps` seconds apart (the head first)."""

    gaps: list[float] = field(default_factory=list)
    head_delay: float = 0.0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(self.head_delay)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            for gap in self.gaps:
                await asyncio.sleep(gap)
                writer.write(b"5\r\npiece\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            await reader.read()  # hold the connection until the balancer lets go
        except (ConnectionError, asyncio.IncompleteReadError):
            pass


async def _get(lb) -> tuple[int, bytes, bool]:
    """Status, the body bytes received, and whether the body ended properly (last chunk)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    try:
        writer.write(b"GET /stream HTTP/1.1\r\nHost: casino.test\r\n\r\n")
        head = await read_head(reader)
        body = b""
        while head.status == 200 and not body.endswith(b"0\r\n\r\n"):
            more = await asyncio.wait_for(reader.read(1 << 16), 5)
            if not more:
                return head.status, body, False
            body += more
        return head.status, body, True
    finally:
        writer.close()


async def test_a_body_that_keeps_flowing_may_outlast_the_response_timeout(start_balancer):
    # Five gaps of 0.15 s: 0.75 s in all, against a 0.4 s timeout.
    backend = await PacedBackend(gaps=[0.15] * 5).start()
    try:
        lb = await start_balancer(one_pool([backend], "timeouts: {response: 400ms}"))
        status, body, complete = await _get(lb)
        assert status == 200
        assert complete
        assert body.count(b"piece") == 5
    finally:
        await backend.stop()


async def test_a_backend_silent_mid_body_is_cut_after_the_response_timeout(start_balancer):
    backend = await PacedBackend(gaps=[0.05, 3.0]).start()
    try:
        lb = await start_balancer(one_pool([backend], "timeouts: {response: 300ms}"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, body, complete = await _get(lb)
        assert status == 200  # the head had gone out: the player sees a cut body
        assert not complete
        assert body.count(b"piece") == 1
        assert loop.time() - started < 2.5  # cut by the timeout, not by the backend's pause
    finally:
        await backend.stop()


async def test_a_head_later_than_the_response_timeout_is_a_504(start_balancer):
    backend = await PacedBackend(head_delay=1.0).start()
    try:
        lb = await start_balancer(one_pool([backend], "timeouts: {response: 200ms}"))
        status, _, _ = await _get(lb)
        assert status == 504
    finally:
        await backend.stop()
