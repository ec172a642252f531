"""Geo routing through the real balancer (docs/configuration.md `geo`; docs/architecture.md).

Where a player is served from, and whether at all: the country from a trusted proxy's header
or a MaxMind database (built here with mmdb-writer), regions with their fallbacks, pinned
countries that never leave their region and blocked ones refused with 451. Also how geo
composes with the balancing strategies and with sticky cookies (the order of docs/architecture.md).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from mmdb_writer import MMDBWriter
from multidict import CIMultiDict
from netaddr import IPSet

from tests.conftest import Running, pool_yaml
from tests.fakes.backends import Backend
from tests.fakes.rawhttp import read_response

GEO = """
geo:
  country_header: CF-IPCountry
  {database}
  regions:
    eu-west: [DE, FR, NL, IE, GB]
    eu-south: [IT, ES, MT]
    na-east: [US, CA]
  fallback:
    eu-south: [eu-west]
    eu-west: [eu-south, na-east]
  default_region: eu-west
  pinned_countries: [IT, ES]
  blocked_countries: [FR]
"""
EU_WEST = {"ew-1", "ew-2"}


@dataclass
class Answer:
    status: int
    backend: str | None
    body: dict
    headers: CIMultiDict[str]
    set_cookie: str | None

    @property
    def region_seen(self) -> str | None:
        """The X-Client-Region the backend received."""
        seen = {k.lower(): v for k, v in self.body.get("headers", {}).items()}
        return seen.get("x-client-region")



@pytest.fixture
async def world(backends) -> list[Backend]:
    return await backends(("ew-1", "eu-west"), ("ew-2", "eu-west"), ("es-1", "eu-south"), ("na-1", "na-east"))


@pytest.fixture(autouse=True)
def sticky_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STICKY_SECRET", "geo-test-secret")


def config(bs: list[Backend], *, trusted: str = "[127.0.0.0/8]", database: str | None = None,
           balance: str = "least_conn", geo: bool = True, pool_extra: str = "") -> str:
    db_line = f"database: {database}" if database else ""
    return f"""
        trusted_proxies: {trusted}
        """ + GEO.format(database=db_line).replace("\n", "\n        ") + f"""
        routes:
          - {{name: all, pool: games}}
        pools:
          games:
            balance: {balance}
            geo: {"true" if geo else "false"}
            {pool_extra}
            backends: {pool_yaml(bs)}
        """


def mmdb(tmp_path: Path, networks: dict[str, str]) -> str:
    """A MaxMind country database mapping each network to an ISO country code."""
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-Country")
    for network, country in networks.items():
        writer.insert_network(IPSet([network]), {"country": {"iso_code": country}})
    path = tmp_path / "countries.mmdb"
    writer.to_db_file(str(path))
    return str(path)


async def get(session: aiohttp.ClientSession, lb: Running, country: str | None = None,
              path: str = "/", headers: dict[str, str] | None = None) -> Answer:
    sent = dict(headers or {})
    if country is not None:
        sent["CF-IPCountry"] = country
    async with session.get(lb.url + path, headers=sent) as resp:
        body = await resp.json() if resp.content_type == "application/json" else {}
        cookies = resp.headers.getall("Set-Cookie", [])
        return Answer(resp.status, resp.headers.get("X-Backend"), body, resp.headers.copy(),
                      cookies[0] if cookies else None)


async def served_by(session: aiohttp.ClientSession, lb: Running, country: str | None,
                    times: int = 24, **kwargs) -> set[str]:
    out = set()
    # Enough asks that two idle backends (least_conn breaks ties at random) both answer.
    for _ in range(times):
        answer = await get(session, lb, country, **kwargs)
        assert answer.status == 200, answer.body
        out.add(answer.backend)
    return out


async def drain(session: aiohttp.ClientSession, lb: Running, backend: str, undo: bool = False) -> None:
    action = "undrain" if undo else "drain"
    async with session.post(f"{lb.admin_url}/admin/pools/games/backends/{backend}/{action}") as resp:
        assert resp.status == 200


def total_requests(bs: list[Backend]) -> int:
    return sum(b.count() for b in bs)


async def rejected_geo_blocked(session: aiohttp.ClientSession, lb: Running) -> float:
    async with session.get(lb.admin_url + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("balancer_rejected_requests_total{") and 'reason="geo_blocked"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- where the country comes from ---------------------------------------------------------


async def test_trusted_country_header_chooses_the_region(start_balancer, world, client):
    lb = await start_balancer(config(world))
    assert await served_by(client, lb, "DE") == EU_WEST
    assert await served_by(client, lb, "US") == {"na-1"}
    assert await served_by(client, lb, "ca") == {"na-1"}  # codes are case-insensitive
    assert await served_by(client, lb, "MT") == {"es-1"}
    assert await served_by(client, lb, "JP") == EU_WEST  # no region: default_region
    assert await served_by(client, lb, "XX") == EU_WEST  # Cloudflare's "unknown"
    assert await served_by(client, lb, None) == EU_WEST


async def test_each_request_on_one_connection_is_served_for_its_own_country(start_balancer, world):
    """A connection's requests, pipelined in one write, each from another country: each is
    chosen with its own facts, none with the one before's."""
    lb = await start_balancer(config(world))
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    countries = ["US", "MT", "DE", "US", "IT", "CA"]
    writer.write(b"".join(b"GET /%d HTTP/1.1\r\nHost: casino.test\r\nCF-IPCountry: %s\r\n\r\n"
                          % (i, country.encode()) for i, country in enumerate(countries)))
    served_from = {"US": {"na-1"}, "CA": {"na-1"}, "MT": {"es-1"}, "IT": {"es-1"}, "DE": EU_WEST}
    for i, country in enumerate(countries):
        answer = await read_response(reader, timeout=30)  # a hang guard
        assert answer.status == 200
        assert answer.json()["path"] == f"/{i}"
        assert answer.header("x-backend") in served_from[country], country
    writer.close()


async def test_client_region_is_forwarded_and_cannot_be_forged(start_balancer, world, client):
    lb = await start_balancer(config(world))
    assert (await get(client, lb, "US")).region_seen == "na-east"
    assert (await get(client, lb, "IT")).region_seen == "eu-south"
    assert (await get(client, lb, "JP")).region_seen == "eu-west"
    forged = await get(client, lb, "DE", headers={"X-Client-Region": "na-east"})
    assert forged.region_seen == "eu-west"


async def test_country_header_from_an_untrusted_peer_is_ignored(start_balancer, world, client):
    lb = await start_balancer(config(world, trusted="[10.0.0.0/8]"))
    assert await served_by(client, lb, "US") == EU_WEST
    # Not believed either way: a forged header cannot get a player blocked or pinned.
    assert (await get(client, lb, "FR")).status == 200
    assert (await get(client, lb, "US")).region_seen == "eu-west"


async def test_database_decides_when_the_header_is_not_believed(start_balancer, world, client, tmp_path):
    database = mmdb(tmp_path, {"127.0.0.0/8": "US"})
    lb = await start_balancer(config(world, trusted="[10.0.0.0/8]", database=database))
    assert await served_by(client, lb, "DE") == {"na-1"}
    assert await served_by(client, lb, None) == {"na-1"}
    assert (await get(client, lb, None)).region_seen == "na-east"


async def test_trusted_header_wins_over_the_database(start_balancer, world, client, tmp_path):
    database = mmdb(tmp_path, {"127.0.0.0/8": "US"})
    lb = await start_balancer(config(world, database=database))
    assert await served_by(client, lb, "DE") == EU_WEST
    assert await served_by(client, lb, None) == {"na-1"}  # no header: the database


async def test_database_looks_up_the_player_behind_a_trusted_proxy(start_balancer, world, client, tmp_path):
    database = mmdb(tmp_path, {"127.0.0.0/8": "DE", "203.0.113.0/24": "CA", "198.51.100.0/24": "MT"})
    lb = await start_balancer(config(world, database=database))
    # The proxy in front (127.0.0.1, trusted) says who its client was; geolocating the proxy
    # itself would put every player in the proxy's country.
    assert await served_by(client, lb, None, headers={"X-Forwarded-For": "203.0.113.9"}) == {"na-1"}
    # A chain: the nearest address that no trusted proxy added is the player.
    chain = {"X-Forwarded-For": "198.51.100.20, 203.0.113.9, 127.0.0.9"}
    assert await served_by(client, lb, None, headers=chain) == {"na-1"}
    # Not an address where a trusted proxy wrote one: no country, so the default region.
    assert await served_by(client, lb, None, headers={"X-Forwarded-For": "203.0.113.9, bogus"}) == EU_WEST
    lb_untrusted = await start_balancer(config(world, trusted="[10.0.0.0/8]", database=database))
    # From an untrusted peer the header is the player's own claim: ignored.
    assert await served_by(client, lb_untrusted, None, headers={"X-Forwarded-For": "203.0.113.9"}) == EU_WEST


async def test_database_country_is_blocked_and_pinned_too(start_balancer, world, client, tmp_path):
    database = mmdb(tmp_path, {"127.0.0.0/8": "FR"})
    lb = await start_balancer(config(world, trusted="[]", database=database))
    assert (await get(client, lb, "DE")).status == 451
    assert total_requests(world) == 0


# -- regions and fallback -----------------------------------------------------------------


async def test_fallback_follows_the_configured_order(start_balancer, world, client):
    lb = await start_balancer(config(world))
    await drain(client, lb, "es-1")
    assert await served_by(client, lb, "MT") == EU_WEST  # eu-south -> eu-west
    await drain(client, lb, "es-1", undo=True)
    await drain(client, lb, "ew-1")
    await drain(client, lb, "ew-2")
    assert await served_by(client, lb, "DE") == {"es-1"}  # eu-west -> eu-south first
    await drain(client, lb, "es-1")
    assert await served_by(client, lb, "DE") == {"na-1"}  # ... then na-east
    assert (await get(client, lb, "DE")).region_seen == "eu-west"  # the player's region still
    await drain(client, lb, "na-1")
    answer = await get(client, lb, "DE")
    assert answer.status == 503
    assert set(answer.body) == {"error", "request_id"}


async def test_region_without_fallback_does_not_spill(start_balancer, world, client):
    lb = await start_balancer(config(world))
    await drain(client, lb, "na-1")
    before = total_requests(world)
    answer = await get(client, lb, "US")
    assert answer.status == 503
    assert total_requests(world) == before


async def test_pinned_country_never_falls_back(start_balancer, world, client):
    lb = await start_balancer(config(world))
    assert await served_by(client, lb, "IT") == {"es-1"}
    await drain(client, lb, "es-1")
    before = total_requests(world)
    for country in ("IT", "ES"):
        answer = await get(client, lb, country)
        assert answer.status == 503
        assert set(answer.body) == {"error", "request_id"}
        assert "Retry-After" in answer.headers
    assert total_requests(world) == before
    # MT shares the region but is not pinned: it falls back.
    assert await served_by(client, lb, "MT") == EU_WEST


async def test_pinned_country_fails_closed_even_in_panic_mode(start_balancer, backends, client):
    bs = await backends(("es-1", "eu-south"), ("ew-1", "eu-west"))
    lb = await start_balancer(config(bs, pool_extra=(
        "outlier: {consecutive_failures: 1, base_ejection: 30s, max_ejected_percent: 50}")))
    es1, ew1 = bs
    es1.mode = "error500"
    assert (await get(client, lb, "MT")).status == 500  # the failure that ejects es-1
    es1.mode = "ok"
    assert await served_by(client, lb, "MT") == {"ew-1"}  # ejected: MT falls back
    await drain(client, lb, "ew-1")
    # Now the only usable backend is ejected: panic mode lets it serve again...
    assert await served_by(client, lb, "MT") == {"es-1"}
    assert await served_by(client, lb, "DE") == {"es-1"}
    # ...but never a pinned jurisdiction: it fails closed.
    before = es1.count()
    answer = await get(client, lb, "IT")
    assert answer.status == 503
    assert int(answer.headers["Retry-After"]) > 1  # until the ejection ends
    assert es1.count() == before


async def test_blocked_country_gets_451_before_any_backend(start_balancer, world, client):
    lb = await start_balancer(config(world, geo=False))  # blocking applies to every pool
    for _ in range(3):
        answer = await get(client, lb, "FR", path="/cashier/withdraw")
        assert answer.status == 451
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.body["error"]
        assert answer.body["request_id"] == answer.headers["X-Request-Id"]
    async with client.post(lb.url + "/cashier/bet", data=b"x" * 1000,
                           headers={"CF-IPCountry": "fr"}) as resp:
        assert resp.status == 451
    assert total_requests(world) == 0
    assert all(b.active_requests == 0 for b in lb.app.pools["games"].backends.values())
    assert await rejected_geo_blocked(client, lb) == 4
    assert (await get(client, lb, "DE")).status == 200


# -- composition (docs/architecture.md order) ------------------------------------------------------------


async def test_geo_with_least_conn(start_balancer, world, client):
    lb = await start_balancer(config(world, balance="least_conn"))
    for b in world:
        b.mode, b.hang_seconds = "hang", 0.3
    answers = await asyncio.gather(*[get(client, lb, "DE") for _ in range(8)])
    # Concurrent players of one region spread evenly over that region only.
    assert Counter(a.backend for a in answers) == {"ew-1": 4, "ew-2": 4}


async def test_geo_with_round_robin(start_balancer, world, client):
    lb = await start_balancer(config(world, balance="round_robin"))
    order = [(await get(client, lb, "DE")).backend for _ in range(6)]
    assert set(order) == EU_WEST
    assert all(order[i] != order[i + 1] for i in range(5))  # alternates within the region
    assert await served_by(client, lb, "US") == {"na-1"}


async def test_geo_with_consistent_hash(start_balancer, world, client):
    lb = await start_balancer(config(world, balance="consistent_hash", pool_extra="hash_on: header:X-Player-Id"))
    keys = [f"player-{i}" for i in range(30)]
    placed = {}
    for key in keys:
        answer = await get(client, lb, "DE", headers={"X-Player-Id": key})
        placed[key] = answer.backend
        assert (await get(client, lb, "DE", headers={"X-Player-Id": key})).backend == answer.backend
    assert set(placed.values()) == EU_WEST  # hashed over the region's backends only
    for key in keys[:5]:
        assert (await get(client, lb, "US", headers={"X-Player-Id": key})).backend == "na-1"
        assert (await get(client, lb, "IT", headers={"X-Player-Id": key})).backend == "es-1"


STICKY = "sticky: {cookie: LB_LIVE, ttl: 1h, on_failure: %s}"


def cookie_of(answer: Answer) -> str:
    assert answer.set_cookie is not None and answer.set_cookie.startswith("LB_LIVE=")
    return answer.set_cookie.split(";", 1)[0]


async def test_sticky_comes_before_geo_for_a_player_who_is_not_pinned(start_balancer, world, client):
    lb = await start_balancer(config(world, pool_extra=STICKY % "rebalance"))
    in_us = await get(client, lb, "US")
    assert in_us.backend == "na-1"
    # The player travels to Germany mid-session: the game state is on na-1, so they stay.
    for _ in range(5):
        answer = await get(client, lb, "DE", headers={"Cookie": cookie_of(in_us)})
        assert (answer.backend, answer.set_cookie) == ("na-1", None)
        assert answer.region_seen == "eu-west"


async def test_sticky_cookie_abroad_is_not_honoured_for_a_pinned_player(start_balancer, world, client):
    lb = await start_balancer(config(world, pool_extra=STICKY % "rebalance"))
    in_de = await get(client, lb, "DE")
    assert in_de.backend in EU_WEST
    answer = await get(client, lb, "IT", headers={"Cookie": cookie_of(in_de)})
    assert answer.backend == "es-1"
    # Re-issued for the in-region backend, which then sticks.
    again = await get(client, lb, "IT", headers={"Cookie": cookie_of(answer)})
    assert (again.backend, again.set_cookie) == ("es-1", None)


async def test_sticky_fail_refuses_a_pinned_player_whose_cookie_points_abroad(start_balancer, world, client):
    lb = await start_balancer(config(world, pool_extra=STICKY % "fail"))
    in_de = await get(client, lb, "DE")
    before = total_requests(world)
    answer = await get(client, lb, "IT", headers={"Cookie": cookie_of(in_de)})
    assert answer.status == 503
    assert total_requests(world) == before


async def test_sticky_cookie_does_not_unblock_a_blocked_country(start_balancer, world, client):
    lb = await start_balancer(config(world, pool_extra=STICKY % "rebalance"))
    in_de = await get(client, lb, "DE")
    before = total_requests(world)
    assert (await get(client, lb, "FR", headers={"Cookie": cookie_of(in_de)})).status == 451
    assert total_requests(world) == before


async def test_blocked_country_gets_451_even_where_no_route_matches(start_balancer, backends, http):
    """Step 1 of choosing a backend (docs/architecture.md) holds for every request: a blocked player is not told which
    paths exist (404) before being told they are refused (451)."""
    bs = await backends(1)
    lb = await start_balancer(f"""
        trusted_proxies: [127.0.0.0/8]
        geo:
          regions: {{eu-west: [DE]}}
          default_region: eu-west
          blocked_countries: [FR]
        routes:
          - {{name: lobby, pool: web, match: {{path_prefix: /lobby}}}}
        pools:
          web:
            backends: [{{id: b1, address: '{bs[0].address}', region: eu-west}}]
        """)
    async with http.get(lb.url + "/nowhere", headers={"CF-IPCountry": "FR"}) as resp:
        assert resp.status == 451
    async with http.get(lb.url + "/nowhere", headers={"CF-IPCountry": "DE"}) as resp:
        assert resp.status == 404
    assert bs[0].count() == 0
