"""balance: ewma through the real balancer: a backend 20 ms slower than its peer gets a small
share of the requests, while weights, draining and sticky cookies are honoured as with every
strategy. Requests go over real sockets to real aiohttp backends; the share is read from the
X-Backend header each answer carries."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp

from tests.conftest import Running, one_pool, pool_yaml
from tests.fakes.backends import Backend

SLOWER = 0.020  # seconds the slow backend waits before answering


async def slow_and_fast(backends) -> tuple[Backend, Backend]:
    fast, slow = await backends("fast", "slow")
    slow.mode = "hang"  # answers normally, after hang_seconds
    slow.hang_seconds = SLOWER
    return fast, slow


async def shares(http: aiohttp.ClientSession, lb: Running, total: int, concurrency: int,
                 headers: dict[str, str] | None = None) -> Counter[str]:
    """Send `total` GETs from `concurrency` players at once; who answered, counted."""
    seen: Counter[str] = Counter()
    left = iter(range(total))

    async def player() -> None:
        for _ in left:
            async with http.get(lb.url + "/", headers=headers or {}) as resp:
                assert resp.status == 200
                seen[resp.headers["X-Backend"]] += 1
                await resp.read()

    await asyncio.gather(*(player() for _ in range(concurrency)))
    return seen


async def test_the_slower_backend_gets_a_small_share(start_balancer, backends, http) -> None:
    fast, slow = await slow_and_fast(backends)
    lb = await start_balancer(one_pool([fast, slow], "balance: ewma"))
    seen = await shares(http, lb, total=200, concurrency=1)
    # One player: both backends are idle at every pick, so least_conn (a tie, broken at random)
    # sends the slow one half of the requests. ewma compares latencies and keeps it for the
    # first request or two and the odd look it is given again as its estimate fades. The bound
    # leaves room for scheduling hiccups on a busy machine, which briefly make the fast
    # backend look slow too.
    assert seen["fast"] + seen["slow"] == 200
    assert seen["slow"] < 200 * 0.15, seen


async def test_equal_backends_share_by_weight(start_balancer, backends, http) -> None:
    heavy, light = await backends("heavy", "light")
    lb = await start_balancer(f"""
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            balance: ewma
            backends:
              - {{id: heavy, address: '{heavy.address}', weight: 4}}
              - {{id: light, address: '{light.address}'}}
        """)
    seen = await shares(http, lb, total=400, concurrency=8)
    # Same latency: the cost is (load + 1) / weight, so the heavy one keeps more in flight.
    assert seen["heavy"] > seen["light"] * 1.5, seen


async def test_a_drained_backend_gets_no_new_player_but_keeps_its_sticky_ones(
        start_balancer, backends, http) -> None:
    fast, slow = await slow_and_fast(backends)
    lb = await start_balancer(one_pool([fast, slow], "balance: ewma\n            sticky: {cookie: LB_GAME}"))
    async with http.post(lb.admin_url + "/admin/pools/web/backends/fast/drain") as resp:
        assert resp.status == 200
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as player:
        async with player.get(lb.url + "/") as resp:
            assert resp.headers["X-Backend"] == "slow"  # the only eligible one
            cookie = resp.cookies["LB_GAME"].value
        async with http.post(lb.admin_url + "/admin/pools/web/backends/fast/undrain") as resp:
            assert resp.status == 200
        # The fast backend is back, and much cheaper; the player's game stays where it lives.
        for _ in range(20):
            async with player.get(lb.url + "/", headers={"Cookie": f"LB_GAME={cookie}"}) as resp:
                assert resp.headers["X-Backend"] == "slow"
        # A new player goes to the fast one.
        seen = await shares(player, lb, total=40, concurrency=2)
        assert seen["fast"] > seen["slow"], seen


async def test_a_stopped_backend_is_left_out(start_balancer, backends, http) -> None:
    fast, slow = await slow_and_fast(backends)
    lb = await start_balancer(one_pool([fast, slow], "balance: ewma\n            retries: {attempts: 2}"))
    await fast.stop()  # the cheaper one is gone: connect failures retry on the slow one
    seen = await shares(http, lb, total=30, concurrency=2)
    assert seen == {"slow": 30}


async def test_geo_comes_before_latency(start_balancer, backends, http) -> None:
    near, far = await backends(("near", "eu-west"), ("far", "eu-south"))
    near.mode = "hang"  # the player's own region is the slower one
    near.hang_seconds = SLOWER
    lb = await start_balancer(f"""
        trusted_proxies: [127.0.0.1/32]
        geo:
          regions: {{eu-west: [DE], eu-south: [IT]}}
          fallback: {{eu-west: [eu-south]}}
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            balance: ewma
            geo: true
            backends: {pool_yaml([near, far])}
        """)
    seen = await shares(http, lb, total=30, concurrency=2, headers={"CF-IPCountry": "DE"})
    assert seen == {"near": 30}  # ewma chooses only among the region's backends
