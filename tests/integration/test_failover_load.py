"""A bounded load test on loopback: one of three backends dies mid-run under concurrent GETs
and POSTs (bets). Players must see no failed GET, and no bet may ever be executed twice; a bet
that could not be placed fails with a clear 502.

Run with `pytest -s` to see the figures.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from tests.conftest import Samples, metric_samples, pool_yaml
from tests.fakes.backends import Backend

CONCURRENCY = 32
RUN_SECONDS = 3.0
KILL_AFTER = 1.0
POST_EVERY = 3  # one request in three is a bet
BACKEND_LATENCY = 0.02  # keeps requests in flight at the moment of the kill


class GameServer(Backend):
    """A test backend that takes a few milliseconds per request (after it has recorded the
    request: a bet in that window has been placed, only its answer is still to come), and
    that can crash: every open connection is cut at once."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.bets_in_flight = 0

    async def _behave(self, request: web.Request) -> web.Response | None:
        bet = request.method == "POST"
        self.bets_in_flight += bet
        try:
            await asyncio.sleep(BACKEND_LATENCY)
        finally:
            self.bets_in_flight -= bet
        return await super()._behave(request)

    async def crash_with_bets_in_flight(self, at_least: int) -> int:
        """Wait until `at_least` placed bets await their answer, then crash; returns how many
        bets the crash caught."""
        while self.bets_in_flight < at_least:
            await asyncio.sleep(0)
        caught = self.bets_in_flight
        await self.crash()
        return caught

    async def crash(self) -> None:
        runner = self._runner
        assert runner is not None and runner.server is not None
        for handler in list(runner.server.connections):
            if handler.transport is not None:
                handler.transport.abort()
        await self.stop()

    def bet_ids(self) -> list[str]:
        return [json.loads(body)["bet"] for body in self.bodies if body]


@dataclass
class Tally:
    gets: Counter[int | str] = field(default_factory=Counter)
    posts: Counter[int | str] = field(default_factory=Counter)
    bets: dict[str, int | str] = field(default_factory=dict)  # bet id -> what the player saw


async def player(http: aiohttp.ClientSession, url: str, tally: Tally, until: float, n: int) -> None:
    i = 0
    while time.monotonic() < until:
        i += 1
        if (i + n) % POST_EVERY == 0:
            bet = uuid.uuid4().hex
            outcome = await _send(http.post(url + "/bet", data=json.dumps({"bet": bet}),
                                            headers={"Content-Type": "application/json"}))
            tally.posts[outcome] += 1
            tally.bets[bet] = outcome
        else:
            tally.gets[await _send(http.get(url + "/lobby"))] += 1


async def _send(request: object) -> int | str:
    """The status the player got, or the name of the error if there was no answer."""
    try:
        async with request as resp:  # type: ignore[attr-defined]
            await resp.read()
            return resp.status
    except aiohttp.ClientError as exc:
        return type(exc).__name__


async def test_killing_one_of_three_backends_fails_no_get_and_duplicates_no_bet(start_balancer):
    servers = [GameServer(f"g{i}") for i in (1, 2, 3)]
    for server in servers:
        await server.start()
    try:
        await _run(start_balancer, servers)
    finally:
        for server in servers:
            await server.stop()


async def _run(start_balancer, servers: list[GameServer]) -> None:
    lb = await start_balancer(f"""
        routes:
          - {{name: all, pool: games}}
        pools:
          games:
            balance: least_conn
            backends: {pool_yaml(servers)}
            health_check: {{path: /health, interval: 200ms, timeout: 2s, unhealthy_threshold: 2}}
            outlier: {{consecutive_failures: 3, base_ejection: 1s, max_ejected_percent: 50}}
            retries: {{attempts: 3, on: [connect_failure, reset, 502, 503, 504]}}
            timeouts: {{connect: 500ms, response: 2s}}
        """)
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as http:
        until = time.monotonic() + RUN_SECONDS
        players = [asyncio.ensure_future(player(http, lb.url, tally, until, n)) for n in range(CONCURRENCY)]
        await asyncio.sleep(KILL_AFTER)
        # Hang guard only: the bets come as soon as the players run.
        caught = await asyncio.wait_for(servers[1].crash_with_bets_in_flight(2), 30.0)
        await asyncio.gather(*players)
        async with http.get(lb.admin_url + "/metrics") as resp:
            metrics = metric_samples(await resp.text())

    executed = Counter(bet for server in servers for bet in server.bet_ids())
    duplicated = [bet for bet, n in executed.items() if n > 1]
    get_failures = sum(n for outcome, n in tally.gets.items() if outcome != 200)
    post_502 = tally.posts[502]
    placed_502 = sum(1 for bet, outcome in tally.bets.items() if outcome == 502 and executed[bet])
    print(
        f"\nfailover load: requests={sum(tally.gets.values()) + sum(tally.posts.values())}"
        f" gets={sum(tally.gets.values())} get_failures={get_failures}"
        f" posts={sum(tally.posts.values())} post_outcomes={dict(tally.posts)}"
        f" post_duplicates={len(duplicated)} post_502={post_502}"
        f" bets_caught_by_crash={caught} post_502_executed_once={placed_502}"
        f" per_backend={[s.count() for s in servers]}"
        f" retries={_metric(metrics, 'balancer_retries_total', pool='games'):.0f}"
        f" ejections_g2={_metric(metrics, 'balancer_backend_ejections_total', pool='games', backend='g2'):.0f}"
    )
    assert get_failures == 0, tally.gets
    assert duplicated == []
    # A bet either went through once (200) or failed with a clear 502, never silently.
    assert set(tally.posts) <= {200, 502}, tally.posts
    assert all(executed[bet] == 1 for bet, outcome in tally.bets.items() if outcome == 200)
    # The bets the crash caught had reached the backend: their players got 502, and they
    # were not sent anywhere else (no duplicate above).
    assert placed_502 >= caught
    # The dead backend was taken out and the others carried the load.
    assert _metric(metrics, "balancer_backend_up", pool="games", backend="g2", region="") == 0
    assert servers[0].count() > 0 and servers[2].count() > 0


def _metric(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]
