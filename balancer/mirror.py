"""Shadow traffic: a copy of a share of a route's requests goes to another pool, and its answer
is thrown away (`routes.N.mirror`).

Three rules make it safe for a casino:

- Only requests that are safe to repeat and carry no body are ever copied: GET, HEAD and
  OPTIONS (not PUT or DELETE, which change state even if repeating them is harmless). A bet,
  a withdrawal or any other request with a body is never sent twice, not even to a test pool.
- The copy never delays or fails the player's request: it leaves after the player's request
  has its backend, in a task of its own, and whatever happens to it (refused, slow, reset)
  stays there.
- At most `max_in_flight` copies are under way per worker; past that a copy is not made, and
  `balancer_mirror_requests_total{result="dropped"}` counts it, so a slow test pool cannot
  pile up connections or memory in the balancer.

A copy is the request head the player's backend gets (X-Forwarded-For, X-Request-Id...), plus
`X-Balancer-Mirror: 1` so the test pool can tell shadow traffic apart, on a connection of its
own that asks the backend to close after answering (`Connection: close`): nothing of a
discarded answer needs to be parsed, and a test pool's misbehaviour cannot poison a pooled
connection. The backend of the mirror pool is chosen by its own balancing, geo rules included
(a pinned player's request is never copied out of their region).
"""

from __future__ import annotations

import asyncio
import logging
from random import random as uniform
from typing import TYPE_CHECKING

from .config import MirrorConfig
from .tasks import spawn

if TYPE_CHECKING:
    from .http.exchange import Exchange
    from .metrics import Stats
    from .pool import Backend
    from .runtime import PoolRuntime

log = logging.getLogger("balancer.mirror")

MIRRORED_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
_MARK = b"x-balancer-mirror: 1\r\nconnection: close\r\n\r\n"
SENT, DROPPED, FAILED = "sent", "dropped", "failed"


class Mirror:
    """The mirror of one route, for one config generation."""

    __slots__ = ("route", "pool", "share", "max_in_flight", "in_flight", "stats", "_calls")

    def __init__(self, route: str, config: MirrorConfig, pool: PoolRuntime, stats: Stats) -> None:
        self.route = route
        self.pool = pool
        self.share = config.percent / 100.0
        self.max_in_flight = config.max_in_flight
        self.in_flight = 0
        self.stats = stats
        self._calls: set[asyncio.Task] = set()

    def offer(self, exchange: Exchange) -> None:
        """The player's request is about to go to its backend: copy it, maybe. Whatever goes
        wrong here is the copy's problem, never the player's."""
        try:
            self._offer(exchange)
        except Exception:
            log.exception("route %s: mirroring a request failed", self.route)
            self.stats.mirror(self.route, self.pool.name, FAILED)

    def _offer(self, exchange: Exchange) -> None:
        head = exchange.head
        if head.method not in MIRRORED_METHODS or head.has_body or head.upgrade is not None:
            return
        if uniform() >= self.share:
            return
        if self.in_flight >= self.max_in_flight:
            self.stats.mirror(self.route, self.pool.name, DROPPED)
            return
        choice = self.pool.choose(exchange.facts)
        backend = choice.backend
        if backend is None:
            self.stats.mirror(self.route, self.pool.name, FAILED)
            return
        self.in_flight += 1
        backend.active_requests += 1  # the mirror pool's balancing sees the copies too
        data = exchange.upstream_head[:-2] + _MARK
        call = spawn(self._send(backend, data))
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

    async def _send(self, backend: Backend, data: bytes) -> None:
        pool = self.pool
        loop = asyncio.get_running_loop()
        answered = loop.create_future()
        transport = None
        result = FAILED
        try:
            async with asyncio.timeout(pool.connect_timeout + pool.response_timeout):
                tls = pool.tls  # a TLS pool gets its copies over TLS too, verified alike
                options = {} if tls is None else {
                    "ssl": tls.for_backend(backend.host, backend.port),
                    "server_hostname": tls.server_hostname(backend.host)}
                transport, _ = await loop.create_connection(
                    lambda: _Discard(answered), backend.host, backend.port, **options)
                transport.write(data)
                if await answered:
                    result = SENT
        except (OSError, TimeoutError):
            pass
        finally:
            if transport is not None:
                transport.abort()
            self.in_flight -= 1
            backend.active_requests -= 1
            self.stats.mirror(self.route, pool.name, result)

    def close(self) -> None:
        """The balancer stops: copies still under way are abandoned."""
        for call in list(self._calls):
            call.cancel()


class _Discard(asyncio.Protocol):
    """Reads a mirrored request's answer to its end and throws it away. `done` gets True once
    the backend answered something and closed, False if it closed without a word."""

    __slots__ = ("done", "answered")

    def __init__(self, done: asyncio.Future) -> None:
        self.done = done
        self.answered = False

    def data_received(self, data: bytes) -> None:
        self.answered = True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.answered and exc is None)
