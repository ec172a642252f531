"""Canary splits through the real balancer (`routes.N.split`, `split_on`, the admin API).

Two pools, `v1` and `v2`, each with one real aiohttp backend named after it; which side served
a player is read from the X-Backend header. Players are aiohttp sessions without a cookie jar:
each test decides which cookie a player sends back. Shares are checked against binomial
bounds of at least five standard deviations, so a correct balancer fails them about once in
a million runs, while a wrong split (say 50/50 for 80/20) fails them every time.
"""

from __future__ import annotations

import asyncio
import math

import aiohttp
import pytest

from tests.conftest import Running, metric_samples, pool_yaml
from tests.integration.test_access_log import line_for, log_top
from tests.fakes.backends import Backend

SECRET = "split-test-secret-0123456789abcdef"
COOKIE = "LB_SPLIT"


@pytest.fixture(autouse=True)
def shared_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STICKY_SECRET", SECRET)



def split_config(v1: Backend, v2: Backend, w1: int = 80, w2: int = 20, extra: str = "",
                 top: str = "", pool_extra: str = "") -> str:
    return f"""
        {top}
        routes:
          - name: games
            split:
              - {{pool: v1, weight: {w1}}}
              - {{pool: v2, weight: {w2}}}
            {extra}
          - {{name: lobby, pool: v1, match: {{path_prefix: /lobby}}}}
        pools:
          v1:
            backends: {pool_yaml([v1])}
            {pool_extra}
          v2:
            backends: {pool_yaml([v2])}
            {pool_extra}
        """


async def sides(backends) -> tuple[Backend, Backend]:
    v1, v2 = await backends("v1", "v2")
    return v1, v2


async def visit(client: aiohttp.ClientSession, lb: Running, cookie: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, str | None, str | None]:
    """(status, which side answered, the LB_SPLIT cookie value set, if any)."""
    sent = dict(headers or {})
    if cookie is not None:
        sent["Cookie"] = f"{COOKIE}={cookie}"
    async with client.get(lb.url + "/play", headers=sent) as resp:
        await resp.read()
        morsel = resp.cookies.get(COOKIE)
        return resp.status, resp.headers.get("X-Backend"), morsel.value if morsel else None


async def new_players(client: aiohttp.ClientSession, lb: Running, count: int) -> list[tuple[str, str]]:
    """`count` first visits: each player's (cookie, side)."""
    async def one() -> tuple[str, str]:
        status, side, cookie = await visit(client, lb)
        assert status == 200 and side is not None and cookie is not None
        return cookie, side
    out = []
    for start in range(0, count, 50):  # 50 at a time: the suite shares two cores
        out += await asyncio.gather(*(one() for _ in range(min(50, count - start))))
    return out


def within(count: int, total: int, share: float) -> bool:
    """Is `count` of `total` within five standard deviations of `share`?"""
    sd = math.sqrt(total * share * (1 - share))
    return abs(count - total * share) <= 5 * sd


async def set_split(http: aiohttp.ClientSession, lb: Running, route: str, body: object,
                    headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with http.post(f"{lb.admin_url}/admin/routes/{route}/split", json=body,
                         headers=headers or {}) as resp:
        return resp.status, await resp.json()


# -- shares and stickiness ---------------------------------------------------------------------


async def test_new_players_are_shared_by_weight(start_balancer, backends, client) -> None:
    v1, v2 = await sides(backends)
    lb = await start_balancer(split_config(v1, v2, 80, 20))
    players = await new_players(client, lb, 400)
    on_v2 = sum(1 for _, side in players if side == "v2")
    assert within(on_v2, 400, 0.20), on_v2
    assert len({cookie for cookie, _ in players}) == 400  # each player gets a cookie of their own


async def test_a_player_stays_on_their_side_across_requests_and_instances(start_balancer, backends, client) -> None:
    v1, v2 = await sides(backends)
    first = await start_balancer(split_config(v1, v2, 50, 50))
    second = await start_balancer(split_config(v1, v2, 50, 50))  # same file, same secret
    players = await new_players(client, first, 40)
    assert {side for _, side in players} == {"v1", "v2"}
    for cookie, side in players:
        for lb in (first, second, second, first):
            status, served, renewed = await visit(client, lb, cookie)
            assert (status, served, renewed) == (200, side, None)


async def test_a_forged_cookie_is_a_new_player(start_balancer, backends, client) -> None:
    v1, v2 = await sides(backends)
    lb = await start_balancer(split_config(v1, v2, 50, 50))
    (cookie, _), = await new_players(client, lb, 1)
    forged = cookie[:-3] + ("AAA" if cookie[-3:] != "AAA" else "QAA")
    status, _, renewed = await visit(client, lb, forged)
    assert status == 200 and renewed is not None and renewed != forged


async def test_changing_weights_moves_only_the_players_it_needs(start_balancer, backends, client) -> None:
    v1, v2 = await sides(backends)
    lb = await start_balancer(split_config(v1, v2, 80, 20))
    players = await new_players(client, lb, 400)
    assert await lb.reload_with(split_config(v1, v2, 50, 50)) == []
    moved = {"v1": 0, "v2": 0}
    for cookie, side in players:
        status, now, _ = await visit(client, lb, cookie)
        assert status == 200
        if now != side:
            moved[side] += 1
    # 80/20 -> 50/50: the boundary moves from 0.8 to 0.5, so the v1 players between (30 of
    # the 80%, 3/8 of them) go to v2, and no v2 player moves at all.
    assert moved["v2"] == 0
    was_v1 = sum(1 for _, side in players if side == "v1")
    assert within(moved["v1"], was_v1, 3 / 8), (moved, was_v1)


async def test_split_on_a_hash_needs_no_cookie(start_balancer, backends, client) -> None:
    v1, v2 = await sides(backends)
    config = split_config(v1, v2, 70, 30, extra="split_on: hash:header:X-Player-Id")
    first = await start_balancer(config)
    second = await start_balancer(config)
    seen: dict[str, str] = {}
    for n in range(300):
        status, side, cookie = await visit(client, first, headers={"X-Player-Id": f"player-{n}"})
        assert status == 200 and side is not None and cookie is None
        seen[f"player-{n}"] = side
    assert within(sum(1 for s in seen.values() if s == "v2"), 300, 0.30)
    for player in list(seen)[:40]:
        for lb in (first, second):
            assert (await visit(client, lb, headers={"X-Player-Id": player}))[1] == seen[player]


# -- run-time changes --------------------------------------------------------------------------


async def test_admin_changes_the_weights_until_the_next_reload(start_balancer, backends, client, http) -> None:
    v1, v2 = await sides(backends)
    lb = await start_balancer(split_config(v1, v2, 50, 50))
    players = await new_players(client, lb, 60)
    status, answer = await set_split(http, lb, "games", {"split": [{"pool": "v2", "weight": 0},
                                                                   {"pool": "v1", "weight": 100}]})
    assert status == 200, answer
    assert answer["split"] == [{"pool": "v1", "weight": 100}, {"pool": "v2", "weight": 0}]
    assert "reload" in answer["note"]
    async with http.get(f"{lb.admin_url}/admin/routes/games/split") as resp:
        assert await resp.json() == {"route": "games", "changed_at_runtime": True,
                                     "split": [{"pool": "v1", "weight": 100}, {"pool": "v2", "weight": 0}]}
    for cookie, _ in players:
        assert (await visit(client, lb, cookie))[1] == "v1"  # everyone, v2's players too
    # A reload takes the file's weights again, and v2's players return to v2.
    assert await lb.app.reload() == []
    for cookie, side in players:
        assert (await visit(client, lb, cookie))[1] == side
    async with http.get(f"{lb.admin_url}/admin/routes/games/split") as resp:
        assert (await resp.json())["changed_at_runtime"] is False


async def test_admin_split_answers_bad_requests_clearly(start_balancer, backends, http) -> None:
    v1, v2 = await sides(backends)
    lb = await start_balancer(split_config(v1, v2))
    cases = [
        ("nope", {"split": [{"pool": "v1", "weight": 1}]}, 404),
        ("lobby", {"split": [{"pool": "v1", "weight": 1}]}, 409),  # a route without a split
        ("games", {"split": [{"pool": "v1", "weight": 1}]}, 400),  # v2 missing
        ("games", {"split": [{"pool": "v1", "weight": 0}, {"pool": "v2", "weight": 0}]}, 400),
        ("games", {"split": [{"pool": "v1", "weight": -1}, {"pool": "v2", "weight": 2}]}, 400),
        ("games", {"split": [{"pool": "v1", "weight": "5"}, {"pool": "v2", "weight": 2}]}, 400),
        ("games", {"weights": {}}, 400),
        ("games", [1, 2], 400),
    ]
    for route, body, expected in cases:
        status, answer = await set_split(http, lb, route, body)
        assert status == expected and "error" in answer, (route, body, status, answer)
    async with http.post(f"{lb.admin_url}/admin/routes/games/split", data=b"{not json") as resp:
        assert resp.status == 400
    async with http.get(f"{lb.admin_url}/admin/routes/lobby/split") as resp:
        assert resp.status == 409
    assert lb.app.runtime.routes.routes[0].split.weights == (80, 20)  # nothing changed


async def test_admin_split_needs_the_admin_token(start_balancer, backends, http, monkeypatch) -> None:
    monkeypatch.setenv("BALANCER_ADMIN_TOKEN", "t0ken")
    v1, v2 = await sides(backends)
    lb = await start_balancer(split_config(v1, v2))
    body = {"split": [{"pool": "v1", "weight": 1}, {"pool": "v2", "weight": 1}]}
    assert (await set_split(http, lb, "games", body))[0] == 401
    status, _ = await set_split(http, lb, "games", body, headers={"Authorization": "Bearer t0ken"})
    assert status == 200


# -- a side that cannot serve --------------------------------------------------------------------


async def test_a_side_without_backends_sends_its_players_to_the_other(start_balancer, backends, client, http) -> None:
    v1, v2 = await sides(backends)
    lb = await start_balancer(split_config(v1, v2, 50, 50))
    players = await new_players(client, lb, 40)
    async with http.post(lb.admin_url + "/admin/pools/v2/backends/v2/drain") as resp:
        assert resp.status == 200
    for cookie, _ in players:
        status, side, renewed = await visit(client, lb, cookie)
        assert (status, side, renewed) == (200, "v1", None)  # served; their bucket is kept
    async with http.post(lb.admin_url + "/admin/pools/v2/backends/v2/undrain") as resp:
        assert resp.status == 200
    for cookie, side in players:
        assert (await visit(client, lb, cookie))[1] == side  # back on their side


GEO = """
        trusted_proxies: [127.0.0.1/32]
        geo:
          regions: {eu: [DE, FR]}
          pinned_countries: [DE]
"""


async def test_pinned_players_keep_their_side(start_balancer, backends, client, http) -> None:
    v1, v2 = await backends(("v1", "eu"), ("v2", "eu"))
    lb = await start_balancer(split_config(v1, v2, 50, 50, top=GEO))
    players = [p for p in await new_players(client, lb, 40) if p[1] == "v2"]
    assert players
    async with http.post(lb.admin_url + "/admin/pools/v2/backends/v2/drain") as resp:
        assert resp.status == 200
    for cookie, _ in players:
        # A French player moves to v1; a German one (pinned) is not moved off their side.
        assert (await visit(client, lb, cookie, {"CF-IPCountry": "FR"}))[:2] == (200, "v1")
        status, side, _ = await visit(client, lb, cookie, {"CF-IPCountry": "DE"})
        assert (status, side) == (503, None)


async def test_metrics_name_the_pool_that_served(start_balancer, backends, client, http) -> None:
    v1, v2 = await sides(backends)
    lb = await start_balancer(split_config(v1, v2, 50, 50))
    players = await new_players(client, lb, 40)
    served = {"v1": 0, "v2": 0}
    for _, side in players:
        served[side] += 1
    async with http.get(lb.admin_url + "/metrics") as resp:
        samples = metric_samples(await resp.text())
    for pool in ("v1", "v2"):
        key = ("balancer_requests_total", frozenset({"route": "games", "pool": pool, "backend": pool,
                                                     "method": "GET", "code": "200"}.items()))
        assert samples.get(key, 0) == served[pool]


async def test_readyz_needs_one_side_of_a_split(start_balancer, backends, http) -> None:
    v1, v2 = await sides(backends)
    lb = await start_balancer(split_config(v1, v2))
    await http.post(lb.admin_url + "/admin/pools/v2/backends/v2/drain")
    async with http.get(lb.admin_url + "/readyz") as resp:
        assert resp.status == 200
    await http.post(lb.admin_url + "/admin/pools/v1/backends/v1/drain")
    async with http.get(lb.admin_url + "/readyz") as resp:
        assert resp.status == 503
        assert "route games: pools v1, v2 have no eligible backend" in (await resp.json())["reasons"]


async def test_the_access_log_names_the_pool_that_served(start_balancer, backends, client, tmp_path) -> None:
    v1, v2 = await sides(backends)
    log = tmp_path / "access.log"
    lb = await start_balancer(split_config(v1, v2, 50, 50, top=log_top(log)))
    for n in range(20):
        async with client.get(lb.url + "/play", headers={"X-Request-Id": f"player-{n}"}) as resp:
            await resp.read()
            side = resp.headers["X-Backend"]
        line = await line_for(lb, log, f"player-{n}")
        assert (line["route"], line["pool"], line["backend"]) == ("games", side, side)
