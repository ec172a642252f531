"""Shadow traffic through the real balancer (`routes.N.mirror`): copies of a route's GETs go to
another pool and their answers are thrown away; nothing with a body is ever copied, and a slow
or dead mirror pool neither delays nor fails a player.

`live` and `shadow` are real aiohttp backends that count what they receive. A copy travels on
its own, after the player's request, so the tests wait for it to arrive (or for the balancer's
copies under way to be none) before they count.
"""

from __future__ import annotations

import asyncio
import math

import aiohttp

from tests.conftest import Running, metric_samples, pool_yaml
from tests.fakes.backends import Backend


def mirror_config(live: Backend, shadow: Backend, percent: float = 100, extra: str = "") -> str:
    return f"""
        routes:
          - name: games
            pool: live
            mirror: {{pool: shadow, percent: {percent}{extra}}}
        pools:
          live:
            backends: {pool_yaml([live])}
          shadow:
            backends: {pool_yaml([shadow])}
        """


async def eventually(condition, what: str) -> None:
    """Wait until `condition()` holds: the copies travel after the players' answers."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def copies_under_way(lb: Running) -> int:
    return lb.app.runtime.routes.routes[0].mirror.in_flight


async def mirror_counts(http: aiohttp.ClientSession, lb: Running) -> dict[str, float]:
    async with http.get(lb.admin_url + "/metrics") as resp:
        samples = metric_samples(await resp.text())
    return {dict(labels)["result"]: value for (name, labels), value in samples.items()
            if name == "balancer_mirror_requests_total"}


async def test_gets_are_copied_and_the_copies_answers_discarded(start_balancer, backends, http) -> None:
    live, shadow = await backends("live", "shadow")
    lb = await start_balancer(mirror_config(live, shadow))
    for n in range(20):
        async with http.get(f"{lb.url}/table/{n}?seat=2") as resp:
            assert resp.status == 200
            assert resp.headers["X-Backend"] == "live"  # the player's answer, never the copy's
    await eventually(lambda: shadow.count() == 20, "20 copies reached the shadow pool")
    assert shadow.count("GET") == 20
    copy = {name.lower(): value for name, value in shadow.seen_headers[0].items()}
    assert copy["x-balancer-mirror"] == "1"
    assert copy["x-forwarded-for"] == "127.0.0.1"
    assert live.count() == 20
    await eventually(lambda: copies_under_way(lb) == 0, "copies done")
    assert await mirror_counts(http, lb) == {"sent": 20}


async def test_a_player_cannot_pass_a_request_off_as_a_copy(start_balancer, backends, http) -> None:
    live, shadow = await backends("live", "shadow")
    lb = await start_balancer(mirror_config(live, shadow))
    async with http.post(lb.url + "/bet", data=b'{"bet": 10}', headers={"X-Balancer-Mirror": "1"}) as resp:
        assert resp.status == 200
    async with http.get(lb.url + "/", headers={"X-Balancer-Mirror": "0"}) as resp:
        assert resp.status == 200
    await eventually(lambda: shadow.count() == 1, "the GET's copy arrived")
    for seen in live.seen_headers:
        assert "x-balancer-mirror" not in {name.lower() for name in seen}
    copy = [value for name, value in shadow.seen_headers[0].items() if name.lower() == "x-balancer-mirror"]
    assert copy == ["1"]  # the balancer's own mark


async def test_requests_with_a_body_or_side_effects_are_never_copied(start_balancer, backends, http) -> None:
    live, shadow = await backends("live", "shadow")
    lb = await start_balancer(mirror_config(live, shadow))
    for method, body in (("POST", b'{"bet": 10}'), ("POST", None), ("PUT", b"x"), ("DELETE", None),
                         ("PATCH", b"{}"), ("GET", b"a body on a GET")):
        async with http.request(method, lb.url + "/bet", data=body) as resp:
            assert resp.status == 200
    assert live.count() == 6
    # One plain GET last: once its copy arrived, any copy of the requests before it would have.
    async with http.get(lb.url + "/lobby") as resp:
        assert resp.status == 200
    await eventually(lambda: shadow.count() >= 1, "the GET's copy arrived")
    await eventually(lambda: copies_under_way(lb) == 0, "copies done")
    assert dict(shadow.requests) == {("GET", "/lobby"): 1}


async def test_a_share_of_the_requests_is_copied(start_balancer, backends, http) -> None:
    live, shadow = await backends("live", "shadow")
    lb = await start_balancer(mirror_config(live, shadow, percent=25))
    for _ in range(400):
        async with http.get(lb.url + "/") as resp:
            assert resp.status == 200
    await eventually(lambda: copies_under_way(lb) == 0, "copies done")
    sd = math.sqrt(400 * 0.25 * 0.75)
    assert abs(shadow.count() - 100) <= 5 * sd, shadow.count()
    assert (await mirror_counts(http, lb))["sent"] == shadow.count()


async def test_a_slow_mirror_pool_neither_delays_players_nor_piles_up(start_balancer, backends, http) -> None:
    live, shadow = await backends("live", "shadow")
    shadow.mode = "hang"  # every copy waits 30 s for its answer
    lb = await start_balancer(mirror_config(live, shadow, extra=", max_in_flight: 2"))
    for _ in range(10):
        async with http.get(lb.url + "/") as resp:
            assert resp.status == 200 and resp.headers["X-Backend"] == "live"
    # Every player was answered while the first two copies still hang: nothing waited for them,
    # and the eight copies beyond the bound were never made.
    assert copies_under_way(lb) == 2
    await eventually(lambda: shadow.count() == 2, "the two copies reached the shadow pool")
    assert await mirror_counts(http, lb) == {"dropped": 8}
    # The balancer stops without waiting for them either (they are abandoned).


async def test_a_dead_mirror_pool_never_fails_a_player(start_balancer, backends, http) -> None:
    live, shadow = await backends("live", "shadow")
    lb = await start_balancer(mirror_config(live, shadow))
    await shadow.stop()
    for _ in range(5):
        async with http.get(lb.url + "/") as resp:
            assert resp.status == 200
    await eventually(lambda: copies_under_way(lb) == 0, "copies done")
    assert await mirror_counts(http, lb) == {"failed": 5}
