"""No request lost to a stale pooled connection (docs/operations.md, "Stale keep-alive
connections").

A backend closes idle keep-alive connections on its own schedule; a request written on a
pooled connection just as the backend closes it gets no answer. The balancer sends such a
request again on a fresh connection when that is safe (idempotent, or Idempotency-Key), counts
it in balancer_stale_connection_retries_total and not against the backend; and it keeps
requests that must not be lost (a bet) away from connections at risk: it honours
`Keep-Alive: timeout=N`, learns a backend's idle limit from the connections it closes, and
keeps a margin before it.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import sys
from dataclasses import dataclass, field

import aiohttp
import pytest

from tests.conftest import Running, metric_samples, one_pool, pool_yaml
from tests.fakes.backends import Backend
from tests.fakes.rawhttp import read_response

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@dataclass
class ClosesOnReuse:
    """A backend that answers the first request on each connection, then closes the
    connection the moment the next request's first bytes arrive, unread and unanswered: the
    race of an idle close with a request on its way, made deterministic. `reset` closes
    with a RST instead of a FIN."""

    reset: bool = False
    name: str = "racy"
    region: str | None = None
    answered: list[bytes] = field(default_factory=list)  # request lines answered
    dropped: int = 0  # requests that arrived on a used connection and were cut
    port: int = 0
    _server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> "ClosesOnReuse":
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Racy(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


class _Racy(asyncio.Protocol):
    def __init__(self, owner: ClosesOnReuse) -> None:
        self.owner = owner
        self.served = 0
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.served:
            self.owner.dropped += 1
            if self.owner.reset:
                sock = self.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.transport.abort()
            else:
                self.transport.close()
            return
        self.buffer += data
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        if len(rest) < length:
            return
        self.buffer = b""
        self.served += 1
        self.owner.answered.append(head.split(b"\r\n")[0])
        self.transport.write(OK)


async def scrape(lb: Running, http: aiohttp.ClientSession) -> dict:
    async with http.get(lb.admin_url + "/metrics") as resp:
        return metric_samples(await resp.text())


async def send(lb: Running, data: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    writer.write(data)
    response = await read_response(reader)
    writer.close()
    return response.status


@pytest.fixture(params=[False, True], ids=["fin", "rst"])
async def racy(request: pytest.FixtureRequest, start_balancer):
    backend = await ClosesOnReuse(reset=request.param).start()
    # One failure would eject it: a stale connection must not count as one.
    lb = await start_balancer(one_pool([backend], "outlier: {consecutive_failures: 1}"))
    # The first request opens the connection that goes into the pool.
    assert await send(lb, b"GET /warm HTTP/1.1\r\nHost: a\r\n\r\n") == 200
    yield lb, backend
    await backend.stop()


GET = b"GET /game HTTP/1.1\r\nHost: a\r\n\r\n"
PUT = b"PUT /state HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
KEYED_POST = b"POST /bet HTTP/1.1\r\nHost: a\r\nIdempotency-Key: bet-7\r\nContent-Length: 3\r\n\r\n100"
POST = b"POST /bet HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n100"


@pytest.mark.parametrize("data", [GET, PUT, KEYED_POST], ids=["get", "put", "post-idempotency-key"])
async def test_a_request_cut_by_an_idle_close_is_sent_again_on_a_fresh_connection(racy, http, data):
    lb, backend = racy
    assert await send(lb, data) == 200
    assert backend.dropped == 1  # it did go out on the pooled connection, which the backend cut
    line = data.split(b"\r\n")[0]
    assert backend.answered.count(line) == 1  # answered once, on the fresh connection
    samples = await scrape(lb, http)
    assert samples[("balancer_stale_connection_retries_total", frozenset({("pool", "web")}))] == 1
    # Not the backend's fault: no upstream error, no failure towards ejection, no retry.
    assert not [k for k in samples if k[0] == "balancer_upstream_errors_total"]
    assert samples[("balancer_retries_total", frozenset({("pool", "web")}))] == 0
    async with http.get(lb.admin_url + "/admin/pools") as resp:
        (pool,) = (await resp.json())["pools"]
    assert [b["state"] for b in pool["backends"]] == ["healthy"]


async def test_a_bet_cut_the_same_way_is_not_sent_twice(racy, http):
    lb, backend = racy
    # Nothing says whether the backend read it before closing: a POST is answered 502, never
    # repeated (had the backend taken the bet and crashed, a repeat would place it twice).
    assert await send(lb, POST) == 502
    assert backend.dropped == 1 and b"POST /bet HTTP/1.1" not in backend.answered
    samples = await scrape(lb, http)
    assert samples[("balancer_stale_connection_retries_total", frozenset({("pool", "web")}))] == 0


# -- backends that close idle connections after 1 s, under players at that period ----------

PLAYERS = 20
ROUNDS = 30  # 20 players x 30 rounds: 300 POSTs and 300 GETs per backend


async def play(http: aiohttp.ClientSession, url: str, rounds: int, seed: int) -> list[str]:
    """Every player sends at once, then all wait about a second (0.9-1.1 s) and send again:
    each round reuses pooled connections that sat idle for about the backend's limit, the
    worst moment. Half the players bet (POST), half look (GET), swapping every round.
    Returns what went wrong (empty: every request answered 200 by the backend)."""
    failures: list[str] = []
    rng = random.Random(seed)

    async def one(player: int, turn: int) -> None:
        if (player + turn) % 2:
            method, path = "POST", f"/bet/{player}/{turn}"
        else:
            method, path = "GET", f"/look/{player}/{turn}"
        try:
            async with http.request(method, url + path, data=b"100" if method == "POST" else None) as resp:
                body = await resp.read()
                if resp.status != 200:
                    failures.append(f"{method} {path}: {resp.status} {body[:80]!r}")
        except aiohttp.ClientError as exc:
            failures.append(f"{method} {path}: {exc!r}")

    for turn in range(rounds):
        await asyncio.gather(*(one(player, turn) for player in range(PLAYERS)))
        await asyncio.sleep(rng.uniform(0.9, 1.1))  # the players' period, not a bound
    return failures


async def test_players_at_the_backends_idle_limit_lose_nothing(start_balancer, http):
    announced = await Backend("announced", keepalive_timeout=1.0, announce_keepalive=True).start()
    silent = await Backend("silent", keepalive_timeout=1.0).start()
    try:
        lb = await start_balancer(f"""
            routes:
              - {{name: announced, match: {{path_prefix: /a/}}, pool: announced}}
              - {{name: silent, match: {{path_prefix: /s/}}, pool: silent}}
            pools:
              announced:
                backends: {pool_yaml([announced])}
              silent:
                backends: {pool_yaml([silent])}
            """)
        # A connection per player per request: no pooling on the player's side.
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector) as players:
            failures = await asyncio.gather(play(players, lb.url + "/a", ROUNDS, 1),
                                            play(players, lb.url + "/s", ROUNDS, 2))
        assert failures == [[], []]
        for backend in (announced, silent):
            # Every bet reached its backend exactly once; so did every look.
            assert backend.count("POST") == backend.count("GET") == PLAYERS * ROUNDS // 2
        samples = await scrape(lb, http)
        assert not [k for k in samples if k[0] == "balancer_upstream_errors_total"]
        # What the balancer knows of each backend's limit: announced, and seen.
        known = {name: lb.app.pools[name].backends[name] for name in ("announced", "silent")}
        assert known["announced"].keepalive_announced == 1.0
        assert 0.5 < known["silent"].keepalive_seen < 1.5
    finally:
        await announced.stop()
        await silent.stop()


# -- a backend killed under load -------------------------------------------------------------

class BackendProcess:
    """tests/fakes/backend_process.py in a process of its own: killed for real."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.region = None
        self.seen: set[str] = set()
        self.process: asyncio.subprocess.Process | None = None
        self._reading: asyncio.Task | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> "BackendProcess":
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.fakes.backend_process", self.name,
            stdout=asyncio.subprocess.PIPE)
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        self.port = int(line.split()[1])
        self._reading = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            self.seen.add(line.split()[1].decode() if len(line.split()) > 1 else "")

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()
        assert self._reading is not None
        await self._reading  # everything it printed before dying is read


class ClosesAsItOpens:
    """The balancer's loop, except that each connection it opens is reset by the backend
    before the coroutine that opened it runs on: the race a backend dying under load makes
    (its kernel accepted the connection, its death resets it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __getattr__(self, name: str):
        return getattr(self._loop, name)

    async def create_connection(self, factory, host, port, **kwargs):
        transport, conn = await self._loop.create_connection(factory, host, port, **kwargs)
        transport.abort()
        while not conn.closed:  # connection_lost comes on a later turn of the loop
            await asyncio.sleep(0)
        return transport, conn


async def test_a_connection_reset_as_it_opens_is_a_failed_connect():
    """Such a connection is a failed connect (retried as one: nothing was sent on it), never
    handed to an exchange, which would write to a closed transport and leave its player
    waiting for a 504."""
    from balancer.config import Address, BackendConfig
    from balancer.http import upstream
    from balancer.pool import Backend as PoolBackend

    server = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = PoolBackend("web", BackendConfig(id="dying", address=Address("127.0.0.1", port)))
    try:
        with pytest.raises(ConnectionResetError):
            await upstream.connect(backend, ClosesAsItOpens(asyncio.get_running_loop()), 5.0,
                                   30.0, 65536)
        assert backend.open_connections == 0
        assert backend.idle == []
    finally:
        server.close()
        await server.wait_closed()


async def test_a_backend_killed_under_load_loses_no_get_that_never_reached_it(start_balancer, backends):
    victim = await BackendProcess("victim").start()
    (survivor,) = await backends(1)
    try:
        lb = await start_balancer(one_pool([victim, survivor]))
        failed: list[tuple[str, int | str]] = []
        answered = 0
        killed = asyncio.Event()
        stop = asyncio.Event()

        async def player(n: int, session: aiohttp.ClientSession) -> None:
            nonlocal answered
            turn = 0
            while not stop.is_set():
                turn += 1
                request_id = f"p{n}-{turn}"
                try:
                    async with session.get(lb.url + "/game", headers={"X-Request-Id": request_id}) as resp:
                        await resp.read()
                        status: int | str = resp.status
                except aiohttp.ClientError as exc:
                    status = repr(exc)
                if status == 200:
                    answered += 1
                    if answered == 400:
                        # Mid-load: every player has a request in flight or about to be.
                        await victim.kill()
                        killed.set()
                else:
                    failed.append((request_id, status))
                if killed.is_set() and answered >= 800:
                    stop.set()

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(player(n, session) for n in range(8)))
        assert killed.is_set()
        # A GET that reached the victim before it died may fail (the backend took it down
        # with it); one that never reached any backend must not.
        lost = [(request_id, status) for request_id, status in failed if request_id not in victim.seen]
        assert lost == []
    finally:
        if victim.process is not None and victim.process.returncode is None:
            await victim.kill()
