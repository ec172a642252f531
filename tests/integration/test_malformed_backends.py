"""Malformed backend responses (docs/security.md, "What a backend may not do to a player").

A backend that frames its answer ambiguously, sends a head over
limits.max_response_header_bytes, keeps talking after its answer, or puts a body where none
may be: the player gets 502 when nothing was sent yet, a closed connection when the body was
already streaming; the backend connection is closed, never reused; outlier detection counts
the fault; and nothing of the bad answer reaches the player as the answer to a later request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import pytest

from tests.conftest import Running, metric_samples, one_pool
from tests.fakes.rawhttp import RawBackend, closed_after, read_response

GOOD = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ngood"


@dataclass
class Misbehaving(RawBackend):
    """Answers `/bad` (any method) with `bad`, anything else with GOOD; counts the
    connections it was given (a new one per request once the balancer gave one up)."""

    bad: bytes | tuple[bytes, ...] = b""  # several pieces: sent one by one, the first flushed first
    name: str = "odd"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n")[0]
                pieces = (self.bad,) if isinstance(self.bad, bytes) else self.bad
                for n, piece in enumerate(pieces if b" /bad" in line else (GOOD,)):
                    if n:
                        await asyncio.sleep(0.05)  # let the first piece reach the player alone
                    writer.write(piece)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


HEAD_LIMIT = 1024
BEFORE_THE_HEAD = {
    "content-length-with-chunked":
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nevil\r\n0\r\n\r\n",
    "two-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nevil",
    "different-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 2\r\n\r\nevil",
    "head-over-the-limit":
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * HEAD_LIMIT + b"\r\nContent-Length: 4\r\n\r\nevil",
    "head-that-never-ends": b"HTTP/1.1 200 OK\r\n" + b"X-Big: a\r\n" * (HEAD_LIMIT // 5),
    "status-not-a-number": b"HTTP/1.1 2x0 OK\r\nContent-Length: 4\r\n\r\nevil",
    "not-http": b"SPDY/3 200 OK\r\nContent-Length: 4\r\n\r\nevil",
    "status-line-garbage": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
}


@pytest.fixture
async def edge(start_balancer):
    made: list[Misbehaving] = []

    async def make(bad: bytes) -> tuple[Running, Misbehaving]:
        backend = await Misbehaving(bad=bad).start()
        made.append(backend)
        lb = await start_balancer(one_pool(
            [backend], top=f"limits: {{max_response_header_bytes: {HEAD_LIMIT}}}"))
        return lb, backend

    yield make
    for backend in made:
        await backend.stop()


async def fault_counted(lb: Running, http: aiohttp.ClientSession) -> None:
    """The backend's fault shows in /metrics (one protocol error) and in what outlier
    detection holds against it (one failure towards outlier.consecutive_failures, 5 here).
    Leftover bytes are found when they arrive, which may be just after the player's answer:
    waited for, up to a generous bound."""
    backend = lb.app.pools["web"].backends["odd"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not backend.upstream_errors and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert backend.consecutive_failures == 1
    async with http.get(lb.admin_url + "/metrics") as resp:
        samples = metric_samples(await resp.text())
    assert samples.get(("balancer_upstream_errors_total",
                        frozenset({("pool", "web"), ("backend", "odd"), ("kind", "protocol")}))) == 1


async def then_good(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The same player connection, next request: the backend's real answer, not leftovers."""
    writer.write(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    response = await read_response(reader)
    assert (response.status, response.body) == (200, b"good")


@pytest.mark.parametrize("bad", BEFORE_THE_HEAD.values(), ids=BEFORE_THE_HEAD.keys())
async def test_a_malformed_head_is_502_and_the_connection_is_not_reused(edge, http, bad):
    lb, backend = await edge(bad)
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    writer.write(b"GET /bad HTTP/1.1\r\nHost: a\r\n\r\n")
    response = await read_response(reader)
    assert response.status == 502 and b"evil" not in response.body
    assert response.json()["error"] == "backend failed"
    await fault_counted(lb, http)
    await then_good(reader, writer)  # answered by the balancer, the connection carries on
    writer.close()
    assert backend.connections == 2  # the bad one was closed, not pooled


async def test_a_bad_chunk_while_streaming_closes_the_players_connection(edge, http):
    lb, backend = await edge((b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfine\r\n",
                              b"zz\r\nevil\r\n0\r\n\r\n"))
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    writer.write(b"GET /bad HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    received = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            received += chunk
    except ConnectionResetError:
        pass
    writer.close()
    # The head and the good chunk were relayed; then the connection closed: the body stops
    # short (no last chunk), "evil" never comes, nor any answer to the pipelined request.
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and b"fine" in received
    assert b"0\r\n\r\n" not in received and b"evil" not in received
    assert received.count(b"HTTP/1.1") == 1
    await fault_counted(lb, http)


AFTER_THE_ANSWER = {
    "bytes-after-the-body": (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil", b"ok"),
    "garbage-after-the-body": (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokevil", b"ok"),
    "body-on-204": (b"GET", b"HTTP/1.1 204 No Content\r\n\r\nevil", b""),
    "body-on-304": (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\nevil", b""),
    "body-on-head": (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil", b""),
    "response-on-head-then-more": (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"
                                   b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil", b""),
}


@pytest.mark.parametrize(("method", "bad", "body"), AFTER_THE_ANSWER.values(), ids=AFTER_THE_ANSWER.keys())
async def test_what_follows_a_complete_answer_never_reaches_a_player(edge, http, method, bad, body):
    lb, backend = await edge(bad)
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    writer.write(method + b" /bad HTTP/1.1\r\nHost: a\r\n\r\n")
    first = await read_response(reader, head_request=method == b"HEAD")
    assert first.body == body
    await fault_counted(lb, http)
    # The next request on the same player connection gets its own answer, from a fresh
    # backend connection: the leftover bytes were not taken for it.
    await then_good(reader, writer)
    writer.close()
    assert backend.connections == 2


async def test_a_player_is_never_sent_two_answers_for_one_request(edge):
    lb, _ = await edge(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                       b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    writer.write(b"GET /bad HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    assert data.count(b"HTTP/1.1") == 1 and b"evil" not in data
    assert await closed_after(reader)
    writer.close()
