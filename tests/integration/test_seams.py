"""Seams between a player, the balancer and a backend (docs/operations.md, "Nothing lost at
the seams"): a backend whose connects go unanswered, a player who leaves mid-request or
mid-WebSocket, a player who stops reading a WebSocket a backend floods.
"""

from __future__ import annotations

import asyncio
import base64
import os
import select
import socket

import aiohttp
import pytest

from tests.conftest import Running, metric_samples, one_pool
from tests.fakes.rawhttp import read_head, read_response
from tests.waiting import HANG_GUARD, until



# -- connects that go unanswered -------------------------------------------------------------

class Unanswered:
    """A backend whose connection attempts go unanswered: a listening socket with backlog 0
    whose accept queue is full (one connection nobody accepts), so the kernel drops every new
    SYN and a connect waits for ever, as behind a firewall that drops."""

    name = "silent"
    region = None

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port))
        probe = socket.socket()
        probe.setblocking(False)
        try:
            probe.connect(("127.0.0.1", self.port))
        except BlockingIOError:
            pass
        # The setup works only if a new connect now stays pending.
        assert not select.select([], [probe], [], 0.2)[1], "the accept queue did not fill"
        self.probe = probe

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        for sock in (self.probe, self.filler, self.listener):
            sock.close()


async def test_a_backend_whose_connects_go_unanswered_is_given_up_at_the_connect_timeout(
        start_balancer, backends, http):
    silent = Unanswered()
    (good,) = await backends(1)
    try:
        lb = await start_balancer(one_pool(
            [silent, good], "balance: round_robin\n            timeouts: {connect: 300ms}"))
        # Half the first choices are the silent one: each is given up after 300 ms and the
        # request goes to the other backend. A client timeout far below the kernel's own
        # connect timeout (about two minutes) and far above 300 ms tells the two apart.
        timeout = aiohttp.ClientTimeout(total=20)
        for _ in range(6):
            async with http.get(lb.url + "/spin", timeout=timeout) as resp:
                assert resp.status == 200
                assert resp.headers["X-Backend"] == good.name
        async with http.get(lb.admin_url + "/metrics") as resp:
            samples = metric_samples(await resp.text())
        gave_up = samples[("balancer_upstream_errors_total",
                           frozenset({("pool", "web"), ("backend", "silent"), ("kind", "connect")}))]
        assert gave_up >= 1
        assert samples[("balancer_retries_total", frozenset({("pool", "web")}))] == gave_up
    finally:
        silent.close()


# -- a player who leaves ---------------------------------------------------------------------

def web_backends(lb: Running) -> list:
    return list(lb.app.pools["web"].backends.values())


@pytest.mark.parametrize("request_bytes", [
    b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
], ids=["get", "post"])
async def test_a_player_gone_mid_request_leaves_no_count_and_no_connection(
        start_balancer, backends, http, request_bytes):
    slow, other = await backends(2)
    for backend in (slow, other):
        backend.mode = "hang"  # whichever gets it is still working on it
    lb = await start_balancer(one_pool([slow, other], "balance: least_conn"))
    state = {b.id: b for b in web_backends(lb)}
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    writer.write(request_bytes)
    await until(lambda: slow.count() + other.count() == 1, "the request reached a backend")
    taken = "b1" if slow.count() else "b2"
    assert state[taken].active_requests == 1
    writer.transport.abort()  # the player vanishes (RST), the backend still working
    await until(lambda: state[taken].active_requests == 0, "the request no longer counted")
    # Its backend connection was closed (not pooled with a response still to come).
    await until(lambda: state[taken].open_connections == 0, "the backend connection closed")
    assert state[taken].idle == []
    # least_conn sees two idle backends again: the next players spread over both.
    slow.mode = other.mode = "ok"
    seen = set()
    for _ in range(20):
        async with http.get(lb.url + "/after") as resp:
            seen.add(resp.headers["X-Backend"])
        if len(seen) == 2:
            break
    assert seen == {"b1", "b2"}
    assert sum(b.active_requests + b.websockets for b in web_backends(lb)) == 0


async def test_a_backend_that_answers_before_the_body_has_come_ends_the_players_connection(
        start_balancer, backends):
    """The test backend refuses a `/ws/` request that is no upgrade (400) on its head alone.
    The answer reaches the player whole, says `Connection: close`, and the connection ends:
    the body still to come is never read as a request (docs/decisions.md, "An answer before
    the body")."""
    (backend,) = await backends(1)
    lb = await start_balancer(one_pool([backend]))
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    writer.write(b"GET /ws/room HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
    response = await read_response(reader, HANG_GUARD)
    assert response.status == 400 and b"WebSocket" in response.body
    assert response.header("connection") == "close"
    # What the player sends now (the body, then a request) is dropped, not served.
    writer.write(b"x" * 100 + b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), HANG_GUARD) == b""
    writer.close()
    await until(lambda: not any(s.connections for s in lb.app.listeners.values()),
                "the player's connection is gone from the balancer")
    assert backend.count(path="/smuggled") == 0
    assert backend.count(path="/ws/room") == 1


def upgrade(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")


async def test_a_player_gone_from_a_websocket_frees_its_count_and_its_backend_side(
        start_balancer, backends):
    (backend,) = await backends(1)
    lb = await start_balancer(one_pool([backend]))
    (state,) = web_backends(lb)
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    writer.write(upgrade("/ws/table"))
    assert (await read_head(reader)).status == 101
    await until(lambda: backend.ws_open == 1 and state.websockets == 1, "the WebSocket open")
    writer.transport.abort()  # no close frame: the player's network went away
    await until(lambda: state.websockets == 0, "the WebSocket no longer counted")
    await until(lambda: backend.ws_open == 0, "the backend's side closed")
    assert state.load == 0 and not state.tunnels
    await until(lambda: state.open_connections == 0, "no backend connection left")


# -- a player who stops reading a flood ------------------------------------------------------

FLOOD = 64 * 1024 * 1024


async def test_a_websocket_flood_to_a_player_who_does_not_read_is_held_back(start_balancer, backends):
    (backend,) = await backends(1)
    lb = await start_balancer(one_pool([backend]))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect(("127.0.0.1", lb.port()))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    writer.write(upgrade(f"/ws/flood/{FLOOD}"))
    assert (await read_head(reader)).status == 101
    writer.transport.pause_reading()  # the player reads nothing more
    # Wait until the backend stops getting anywhere: its sends block once every buffer on the
    # way is full, which happens only if the balancer stopped reading from it.
    last = -1
    steady = 0
    while steady < 20:
        await asyncio.sleep(0.05)
        steady = steady + 1 if backend.ws_sent == last else 0
        last = backend.ws_sent
        assert backend.ws_sent < FLOOD, "the whole flood went through: nothing held it back"
    (server,) = lb.app.listeners.values()
    (player,) = server.connections
    held = player.transport.get_write_buffer_size()
    # What the balancer holds for this player: about one read from the backend past its
    # high-water mark, not the flood.
    assert held < 4 * 1024 * 1024, held
    # And nothing is lost: once the player reads, the whole flood arrives.
    writer.transport.resume_reading()
    received = 0
    while received < FLOOD:
        chunk = await asyncio.wait_for(reader.read(1 << 20), HANG_GUARD)
        assert chunk
        received += len(chunk)
    assert received >= FLOOD  # frames' own headers come on top
    writer.close()
