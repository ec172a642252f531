"""Player affinity through the real balancer: signed sticky cookies and consistent hashing
(docs/configuration.md `sticky`, `hash_on`, `hash_balance_factor`; docs/architecture.md).

Every request here goes over a real socket to the real balancer and on to real aiohttp
backends; what is asserted is what a player's browser or a game client would observe: the
Set-Cookie header, and which backend (X-Backend) answered.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import time
from collections import Counter
from dataclasses import dataclass

import aiohttp
import pytest
import trustme

from balancer.config import StickyConfig
from balancer.sticky import StickyCookies
from tests.conftest import Running, pool_yaml
from tests.fakes.backends import Backend
from tests.waiting import until

SECRET = "affinity-test-secret-0123456789abcdef"
COOKIE = "LB_LIVE"
# Long, distinctive ids: a short id like "b1" could turn up in a base64 value by chance.
GAME_SERVERS = ("game-alpha", "game-bravo", "game-charlie")


@dataclass
class Answer:
    status: int
    backend: str | None
    set_cookie: str | None  # the raw Set-Cookie header for the sticky cookie, if any
    body: dict
    headers: dict[str, str]

    @property
    def cookie_value(self) -> str:
        assert self.set_cookie is not None, "no sticky cookie issued"
        return self.set_cookie.split(";", 1)[0].split("=", 1)[1]

    @property
    def cookie(self) -> str:
        """What the browser sends back: `NAME=value`."""
        return f"{COOKIE}={self.cookie_value}"


@pytest.fixture(autouse=True)
def shared_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before any balancer starts: every instance of a test reads the same secret.
    monkeypatch.setenv("STICKY_SECRET", SECRET)



async def get(session: aiohttp.ClientSession, lb: Running, path: str = "/",
              cookie: str | None = None, headers: dict[str, str] | None = None) -> Answer:
    sent = dict(headers or {})
    if cookie is not None:
        sent["Cookie"] = cookie
    async with session.get(lb.url + path, headers=sent) as resp:
        body = await resp.json(content_type=None)
        sticky = [c for c in resp.headers.getall("Set-Cookie", []) if c.startswith(COOKIE + "=")]
        assert len(sticky) <= 1
        return Answer(resp.status, resp.headers.get("X-Backend"), sticky[0] if sticky else None,
                      body, dict(resp.headers))


def attributes(set_cookie: str) -> dict[str, str]:
    """Set-Cookie attributes, names lower-cased: {"httponly": "", "max-age": "3600", ...}."""
    out = {}
    for part in set_cookie.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        out[name.lower()] = value
    return out


def sticky_pool(bs: list[Backend], on_failure: str = "rebalance", ttl: str = "1h",
                extra: str = "") -> str:
    return f"""
        routes:
          - {{name: all, pool: games}}
        pools:
          games:
            balance: least_conn
            sticky: {{cookie: {COOKIE}, ttl: {ttl}, secret_env: STICKY_SECRET, on_failure: {on_failure}}}
            {extra}
            backends: {pool_yaml(bs)}
        """


async def game_servers(backends, count: int = 3) -> list[Backend]:
    return await backends(*[(name, None) for name in GAME_SERVERS[:count]])


async def admin_post(session: aiohttp.ClientSession, lb: Running, path: str) -> None:
    async with session.post(lb.admin_url + path) as resp:
        assert resp.status == 200, await resp.text()


async def backend_states(session: aiohttp.ClientSession, lb: Running) -> dict[str, str]:
    async with session.get(lb.admin_url + "/admin/pools") as resp:
        doc = await resp.json()
    return {b["id"]: b["state"] for p in doc["pools"] for b in p["backends"]}


# -- sticky cookie ------------------------------------------------------------------------


async def test_first_response_issues_an_opaque_http_only_cookie(start_balancer, backends, client):
    bs = await game_servers(backends)
    lb = await start_balancer(sticky_pool(bs, ttl="1h"))
    first = await get(client, lb)
    assert first.status == 200
    assert first.set_cookie is not None
    attrs = attributes(first.set_cookie)
    assert attrs["max-age"] == "3600"
    assert "httponly" in attrs
    assert attrs["samesite"].lower() == "lax"
    assert "secure" not in attrs  # a plain-HTTP listener: the browser would drop a Secure cookie
    # Opaque: neither the id nor the address of the backend, in the text or in its bytes.
    value = first.cookie_value
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    for b in bs:
        for secret_part in (b.name, b.address, str(b.port)):
            assert secret_part not in value
            assert secret_part.encode() not in raw


async def test_cookie_is_secure_on_a_tls_listener(start_balancer, backends, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    listeners = (f"listeners:\n  - name: public\n    address: 127.0.0.1:0\n"
                 f"    tls: {{certificate: {tmp_path / 'server.pem'}, key: {tmp_path / 'server.pem'}}}\n")
    bs = await game_servers(backends)
    lb = await start_balancer(sticky_pool(bs), listeners=listeners)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    connector = aiohttp.TCPConnector(ssl=client_context)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as tls:
        async with tls.get(f"https://127.0.0.1:{lb.port()}/") as resp:
            assert resp.status == 200
            sticky = [c for c in resp.headers.getall("Set-Cookie") if c.startswith(COOKIE + "=")]
    attrs = attributes(sticky[0])
    assert "secure" in attrs and "httponly" in attrs


async def test_cookie_keeps_the_player_on_one_backend(start_balancer, backends, client):
    bs = await game_servers(backends)
    lb = await start_balancer(sticky_pool(bs))
    first = await get(client, lb)
    seen = Counter()
    for _ in range(15):
        again = await get(client, lb, cookie=first.cookie)
        seen[again.backend] += 1
        assert again.set_cookie is None  # honoured, so not re-issued
    assert seen == {first.backend: 15}
    # Without the cookie least_conn spreads players: the stickiness above is the cookie's doing.
    assert len({(await get(client, lb)).backend for _ in range(15)}) > 1


async def test_another_instance_with_the_same_secret_honours_the_cookie(
        start_balancer, backends, client, monkeypatch):
    bs = await game_servers(backends)
    lb1 = await start_balancer(sticky_pool(bs))
    lb2 = await start_balancer(sticky_pool(bs))
    first = await get(client, lb1)
    for _ in range(10):
        again = await get(client, lb2, cookie=first.cookie)
        assert (again.backend, again.set_cookie) == (first.backend, None)
    # An instance with another secret cannot verify it: the cookie counts as absent there.
    monkeypatch.setenv("STICKY_SECRET", "some-other-secret")
    lb3 = await start_balancer(sticky_pool(bs))
    stranger = await get(client, lb3, cookie=first.cookie)
    assert stranger.status == 200
    assert stranger.set_cookie is not None


async def test_tampered_cookie_is_ignored_and_replaced(start_balancer, backends, client):
    bs = await game_servers(backends)
    lb = await start_balancer(sticky_pool(bs))
    first = await get(client, lb)
    value = first.cookie_value
    # Draining the cookie's backend: a valid cookie still reaches it, a new player never does,
    # so where a tampered cookie lands tells whether it was believed.
    await admin_post(client, lb, f"/admin/pools/games/backends/{first.backend}/drain")
    assert (await get(client, lb, cookie=first.cookie)).backend == first.backend
    for at in range(len(value)):
        flipped = value[:at] + ("B" if value[at] == "A" else "A") + value[at + 1:]
        answer = await get(client, lb, cookie=f"{COOKIE}={flipped}")
        assert answer.status == 200
        assert answer.backend != first.backend
        assert answer.set_cookie is not None


async def test_garbage_cookie_values_are_treated_as_absent(start_balancer, backends, client):
    bs = await game_servers(backends)
    lb = await start_balancer(sticky_pool(bs))
    for junk in ("", "x", "%00%ff", "a" * 34, "a" * 400, '"quoted"', "..--__"):
        answer = await get(client, lb, cookie=f"{COOKIE}={junk}")
        assert answer.status == 200
        assert answer.set_cookie is not None


async def test_expired_cookie_is_ignored_and_replaced(start_balancer, backends, client):
    bs = await game_servers(backends)
    lb = await start_balancer(sticky_pool(bs))
    # The cookie another instance (same secret, same pool) issued for game-alpha two hours
    # ago with ttl 1h; and, as a control, the one it would issue now.
    cookies = StickyCookies(StickyConfig(cookie=COOKIE, ttl=3600.0), "games", SECRET.encode())
    expired = f"{COOKIE}={cookies.encode('game-alpha', time.time() - 7200)}"
    fresh = f"{COOKIE}={cookies.encode('game-alpha', time.time())}"
    await admin_post(client, lb, "/admin/pools/games/backends/game-alpha/drain")
    assert (await get(client, lb, cookie=fresh)).backend == "game-alpha"
    for _ in range(5):
        answer = await get(client, lb, cookie=expired)
        assert answer.status == 200
        assert answer.backend != "game-alpha"
        assert answer.set_cookie is not None


async def test_draining_backend_keeps_its_players_but_takes_no_new_ones(start_balancer, backends, client):
    bs = await game_servers(backends)
    lb = await start_balancer(sticky_pool(bs))
    players = [await get(client, lb) for _ in range(6)]
    drained = players[0].backend
    await admin_post(client, lb, f"/admin/pools/games/backends/{drained}/drain")
    assert (await backend_states(client, lb))[drained] == "draining"
    for player in players:
        for _ in range(3):
            assert (await get(client, lb, cookie=player.cookie)).backend == player.backend
    newcomers = [await get(client, lb) for _ in range(12)]
    assert drained not in {n.backend for n in newcomers}
    # The newcomers' cookies lead where they were served.
    for newcomer in newcomers:
        assert (await get(client, lb, cookie=newcomer.cookie)).backend == newcomer.backend
    # Undrained, it takes new players again.
    await admin_post(client, lb, f"/admin/pools/games/backends/{drained}/undrain")
    # Forty asks: idle backends tie and least_conn breaks ties at random.
    assert drained in {(await get(client, lb)).backend for _ in range(40)}


# A stopped backend refuses connections at once: the probe timeout is only a hang guard, long
# enough that a probe waiting for a busy CPU never marks a live backend down.
HEALTH = "health_check: {path: /health, interval: 100ms, timeout: 2s, healthy_threshold: 1, unhealthy_threshold: 1}"


async def wait_for_state(session: aiohttp.ClientSession, lb: Running, backend: str, state: str) -> None:
    async def reached() -> bool:
        return (await backend_states(session, lb)).get(backend) == state

    await until(reached, f"{backend} became {state}", step=0.05)


async def test_rebalance_moves_the_player_and_reissues_the_cookie(start_balancer, backends, client):
    bs = await game_servers(backends)
    lb = await start_balancer(sticky_pool(bs, on_failure="rebalance", extra=HEALTH))
    first = await get(client, lb)
    dead = next(b for b in bs if b.name == first.backend)
    await dead.stop()
    await wait_for_state(client, lb, dead.name, "unhealthy")
    moved = await get(client, lb, cookie=first.cookie)
    assert moved.status == 200
    assert moved.backend != dead.name
    assert moved.set_cookie is not None
    # The new cookie is the player's new home.
    for _ in range(5):
        assert (await get(client, lb, cookie=moved.cookie)).backend == moved.backend


async def test_rebalance_on_a_connect_failure_before_health_checks_notice(start_balancer, backends, client):
    bs = await game_servers(backends)
    lb = await start_balancer(sticky_pool(bs, on_failure="rebalance"))
    first = await get(client, lb)
    await next(b for b in bs if b.name == first.backend).stop()
    moved = await get(client, lb, cookie=first.cookie)  # connect fails, the retry goes elsewhere
    assert moved.status == 200
    assert moved.backend != first.backend
    assert moved.set_cookie is not None
    assert (await get(client, lb, cookie=moved.cookie)).backend == moved.backend


async def test_fail_answers_503_instead_of_moving_the_player(start_balancer, backends, client):
    bs = await game_servers(backends)
    lb = await start_balancer(sticky_pool(bs, on_failure="fail", extra=HEALTH))
    first = await get(client, lb)
    dead = next(b for b in bs if b.name == first.backend)
    others_before = sum(b.count() for b in bs if b is not dead)
    await dead.stop()
    await wait_for_state(client, lb, dead.name, "unhealthy")
    refused = await get(client, lb, cookie=first.cookie)
    assert refused.status == 503
    assert refused.set_cookie is None
    assert "retry-after" in {k.lower() for k in refused.headers}
    assert set(refused.body) == {"error", "request_id"}
    assert sum(b.count() for b in bs if b is not dead) == others_before
    # A player without a cookie is still served.
    assert (await get(client, lb)).status == 200


async def test_fail_does_not_retry_a_sticky_player_elsewhere(start_balancer, backends, client):
    bs = await game_servers(backends)
    lb = await start_balancer(sticky_pool(bs, on_failure="fail"))
    first = await get(client, lb)
    dead = next(b for b in bs if b.name == first.backend)
    others_before = sum(b.count() for b in bs if b is not dead)
    await dead.stop()
    # Not yet known to be down: the connect fails, and a retry would silently move the game.
    answer = await get(client, lb, cookie=first.cookie)
    assert answer.status in (502, 503)
    assert answer.set_cookie is None
    assert sum(b.count() for b in bs if b is not dead) == others_before


async def test_fail_when_the_cookies_backend_is_gone_after_a_reload(start_balancer, backends, client):
    bs = await game_servers(backends)
    lb = await start_balancer(sticky_pool(bs, on_failure="fail"))
    first = await get(client, lb)
    rest = [b for b in bs if b.name != first.backend]
    # Its sticky players keep a removed backend until drain_timeout (docs/architecture.md): let it run out.
    await lb.reload_with(sticky_pool(rest, on_failure="fail", extra="drain_timeout: 200ms"))
    for _ in range(150):
        if first.backend not in await backend_states(client, lb):
            break
        await asyncio.sleep(0.02)
    answer = await get(client, lb, cookie=first.cookie)
    assert answer.status == 503
    assert answer.set_cookie is None


async def test_rebalance_when_the_cookies_backend_is_gone_after_a_reload(start_balancer, backends, client):
    bs = await game_servers(backends)
    lb = await start_balancer(sticky_pool(bs))
    first = await get(client, lb)
    rest = [b for b in bs if b.name != first.backend]
    await lb.reload_with(sticky_pool(rest, extra="drain_timeout: 200ms"))
    for _ in range(150):
        if first.backend not in await backend_states(client, lb):
            break
        await asyncio.sleep(0.02)
    answer = await get(client, lb, cookie=first.cookie)
    assert answer.status == 200
    assert answer.backend in {b.name for b in rest}
    assert answer.set_cookie is not None


# -- consistent_hash ----------------------------------------------------------------------


def hash_pool(bs: list[Backend], hash_on: str, extra: str = "") -> str:
    return f"""
        routes:
          - {{name: all, pool: games}}
        pools:
          games:
            balance: consistent_hash
            hash_on: {hash_on}
            {extra}
            backends: {pool_yaml(bs)}
        """


KEYED = {
    "header:X-Player-Id": lambda key: {"headers": {"X-Player-Id": key}},
    "cookie:player": lambda key: {"cookie": f"theme=dark; player={key}; lang=en"},
    "query:player": lambda key: {"path": f"/lobby?table=7&player={key}"},
}


async def mapping(session: aiohttp.ClientSession, lb: Running, hash_on: str, keys: list[str]) -> dict[str, str]:
    out = {}
    for key in keys:
        answer = await get(session, lb, **KEYED[hash_on](key))
        assert answer.status == 200
        out[key] = answer.backend
    return out


@pytest.mark.parametrize("hash_on", sorted(KEYED))
async def test_same_key_same_backend_on_every_instance(start_balancer, backends, client, hash_on):
    bs = await backends(4)
    lb1 = await start_balancer(hash_pool(bs, hash_on))
    lb2 = await start_balancer(hash_pool(list(reversed(bs)), hash_on))  # order must not matter
    keys = [f"player-{i}" for i in range(40)]
    first = await mapping(client, lb1, hash_on, keys)
    assert await mapping(client, lb2, hash_on, keys) == first
    assert await mapping(client, lb1, hash_on, keys) == first
    assert set(first.values()) == {b.name for b in bs}  # 40 keys reach all 4 backends


async def raw_get_from(lb: Running, local_ip: str) -> str:
    """GET / from a chosen loopback source address; the answering backend's name."""
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port(), local_addr=(local_ip, 0))
    writer.write(b"GET / HTTP/1.1\r\nHost: lobby\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    match = re.search(rb"\r\nx-backend: ([^\r]+)", data, re.IGNORECASE)
    assert data.startswith(b"HTTP/1.1 200") and match, data[:200]
    return match.group(1).decode()


async def test_client_ip_hashing_agrees_across_instances(start_balancer, backends):
    bs = await backends(4)
    lb1 = await start_balancer(hash_pool(bs, "client_ip"))
    lb2 = await start_balancer(hash_pool(bs, "client_ip"))
    # The whole of 127.0.0.0/8 is loopback on Linux: 30 players, 30 source addresses.
    sources = [f"127.0.{i}.{i + 2}" for i in range(30)]
    first = {ip: await raw_get_from(lb1, ip) for ip in sources}
    assert {ip: await raw_get_from(lb2, ip) for ip in sources} == first
    assert {ip: await raw_get_from(lb1, ip) for ip in sources} == first
    assert len(set(first.values())) >= 3


async def test_request_without_the_hash_key_is_still_served(start_balancer, backends, client):
    bs = await backends(3)
    lb = await start_balancer(hash_pool(bs, "header:X-Player-Id"))
    served = {(await get(client, lb)).backend for _ in range(12)}
    # No key: least_conn instead (as HAProxy falls back to round robin), not one hot backend.
    assert len(served) > 1


def assert_only_the_lost_backends_keys_moved(before: dict[str, str], after: dict[str, str],
                                              lost: str, backend_count: int) -> None:
    moved = {k for k in before if before[k] != after[k]}
    assert moved == {k for k in before if before[k] == lost}
    assert lost not in after.values()
    share = len(moved) / len(before)
    assert 0.4 / backend_count < share < 1.8 / backend_count  # about 1/N


async def test_draining_a_backend_moves_only_its_keys(start_balancer, backends, client):
    bs = await backends(4)
    lb = await start_balancer(hash_pool(bs, "header:X-Player-Id"))
    keys = [f"player-{i}" for i in range(120)]
    before = await mapping(client, lb, "header:X-Player-Id", keys)
    await admin_post(client, lb, "/admin/pools/games/backends/b2/drain")
    after = await mapping(client, lb, "header:X-Player-Id", keys)
    assert_only_the_lost_backends_keys_moved(before, after, "b2", 4)
    await admin_post(client, lb, "/admin/pools/games/backends/b2/undrain")
    assert await mapping(client, lb, "header:X-Player-Id", keys) == before


async def test_removing_a_backend_by_reload_moves_only_its_keys(start_balancer, backends, client):
    bs = await backends(5)
    lb = await start_balancer(hash_pool(bs, "query:player"))
    keys = [f"p{i}" for i in range(120)]
    before = await mapping(client, lb, "query:player", keys)
    assert await lb.reload_with(hash_pool([b for b in bs if b.name != "b4"], "query:player")) == []
    after = await mapping(client, lb, "query:player", keys)
    assert_only_the_lost_backends_keys_moved(before, after, "b4", 5)
    # A second instance started on the new backend set agrees with the reloaded one.
    lb2 = await start_balancer(hash_pool([b for b in bs if b.name != "b4"], "query:player"))
    assert await mapping(client, lb2, "query:player", keys) == after


async def concurrent_same_key(session: aiohttp.ClientSession, lb: Running, bs: list[Backend],
                              count: int) -> Counter[str]:
    # Every request is held at its backend until all of them have arrived: they are truly
    # concurrent however slowly a busy machine sends them (a timed hang was not).
    for b in bs:
        b.mode = "hold"
        b.released.clear()
    sending = asyncio.gather(*[get(session, lb, headers={"X-Player-Id": "whale"})
                               for _ in range(count)])
    await until(lambda: sum(b.count() for b in bs) == count, "every request held at a backend")
    for b in bs:
        b.released.set()
    answers = await sending
    assert all(a.status == 200 for a in answers)
    return Counter(a.backend for a in answers)


async def test_hash_balance_factor_bounds_the_load_of_a_hot_key(start_balancer, backends, client):
    bs = await backends(3)
    bounded = await start_balancer(hash_pool(bs, "header:X-Player-Id", "hash_balance_factor: 1.25"))
    loads = await concurrent_same_key(client, bounded, bs, 12)
    # None may hold more than ceil(1.25 * 12 / 3) = 5 of the 12 concurrent requests.
    assert max(loads.values()) <= 5
    assert len(loads) == 3


async def test_without_balance_factor_a_hot_key_stays_on_one_backend(start_balancer, backends, client):
    bs = await backends(3)
    plain = await start_balancer(hash_pool(bs, "header:X-Player-Id"))
    loads = await concurrent_same_key(client, plain, bs, 12)
    assert len(loads) == 1
