"""Geo: country from a trusted header or a MaxMind database, region order, pinned and blocked
countries (docs/configuration.md geo; docs/architecture.md)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from balancer.config import Address, BackendConfig, GeoConfig
from balancer.config_file import parse_config
from balancer.geo import Geo, normalize_country
from balancer.metrics import Stats
from balancer.pool import Backend, Pool
from balancer.runtime import Runtime

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ffff::/48"))

CONFIG = GeoConfig(
    country_header="CF-IPCountry",
    regions={
        "eu-west": ("DE", "FR", "NL", "IE", "GB"),
        "eu-south": ("IT", "ES", "MT"),
        "na-east": ("US", "CA"),
    },
    fallback={"eu-south": ("eu-west",), "eu-west": ("eu-south", "na-east")},
    default_region="eu-west",
    pinned_countries=frozenset({"IT", "ES"}),
    blocked_countries=frozenset({"FR"}),
)


def backend(backend_id: str, region: str | None) -> Backend:
    return Backend("games", BackendConfig(id=backend_id, address=Address("10.0.1.5", 8000), region=region))


@pytest.fixture
def geo() -> Geo:
    return Geo(CONFIG, TRUSTED)


@pytest.fixture
def database(tmp_path: Path) -> str:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-Country")
    writer.insert_network(IPSet(["81.2.69.0/24"]), {"country": {"iso_code": "DE"}, "registered_country": {"iso_code": "GB"}})
    writer.insert_network(IPSet(["89.160.20.0/24"]), {"country": {"iso_code": "IT"}})
    # Anycast / satellite ranges often carry only the registered country.
    writer.insert_network(IPSet(["198.51.100.0/24"]), {"registered_country": {"iso_code": "US"}})
    writer.insert_network(IPSet(["2a02:ff0::/32"]), {"country": {"iso_code": "FR"}})
    writer.insert_network(IPSet(["203.0.113.0/24"]), {"continent": {"code": "OC"}})
    path = tmp_path / "test-country.mmdb"
    writer.to_db_file(str(path))
    return str(path)


# -- the country header ------------------------------------------------------------------


def test_header_believed_from_trusted_peer(geo: Geo) -> None:
    assert geo.country("10.1.2.3", "de") == "DE"
    assert geo.country("2001:db8:ffff::7", " IT ") == "IT"
    # A listener bound to [::] sees IPv4 peers as IPv4-mapped IPv6 addresses.
    assert geo.country("::ffff:10.1.2.3", "NL") == "NL"


def test_header_ignored_from_untrusted_peer(geo: Geo) -> None:
    assert geo.country("203.0.113.9", "DE") is None
    assert geo.country("not an address", "DE") is None


def test_header_ignored_when_no_proxy_is_trusted() -> None:
    assert Geo(CONFIG, ()).country("10.1.2.3", "DE") is None


def test_header_as_raw_bytes(geo: Geo) -> None:
    assert geo.country("10.1.2.3", b"de") == "DE"
    assert geo.country("10.1.2.3", b"XX") is None
    assert geo.country("10.1.2.3", b"\xc4\xd6") is None
    assert geo.country("203.0.113.9", b"DE") is None


@pytest.mark.parametrize("value", ["XX", "T1", "xx", "", "D", "DEU", "1A", "D€", "ÄÖ", "EU-WEST"])
def test_unknown_or_malformed_header_values(geo: Geo, value: str) -> None:
    assert geo.country("10.1.2.3", value) is None
    assert normalize_country(value) is None


def test_trust_is_cached_and_bounded(geo: Geo) -> None:
    assert geo.is_trusted("10.255.0.1")
    assert not geo.is_trusted("11.0.0.1")
    assert not geo.is_trusted("")
    assert geo.is_trusted("10.255.0.1")


# -- the database --------------------------------------------------------------------------


def test_database_lookup_on_the_client_address(database: str) -> None:
    geo = Geo(replace(CONFIG, database=database), TRUSTED)
    try:
        assert geo.country("81.2.69.160", None) == "DE"  # country wins over registered_country
        assert geo.country("89.160.20.112", None) == "IT"
        assert geo.country("198.51.100.7", None) == "US"  # registered_country as fallback
        assert geo.country("2a02:ff0::1", None) == "FR"
        assert geo.country("::ffff:81.2.69.1", None) == "DE"
        assert geo.country("203.0.113.5", None) is None  # record without a country
        assert geo.country("192.0.2.1", None) is None  # not in the database
        assert geo.country("garbage", None) is None
        # Repeated lookups come from the cache and agree.
        assert geo.country("81.2.69.160", None) == "DE"
    finally:
        geo.close()


def test_untrusted_header_falls_back_to_the_database(database: str) -> None:
    geo = Geo(replace(CONFIG, database=database), TRUSTED)
    try:
        # A player claiming to be in the US is looked up instead.
        assert geo.country("81.2.69.160", "US") == "DE"
        # A trusted proxy with an unknown value: the database is asked about the client, not
        # about the proxy's own address.
        assert geo.country("10.1.2.3", "XX", client_ip="89.160.20.1") == "IT"
        assert geo.country("10.1.2.3", "XX") is None
        # A trusted proxy's header wins over the database.
        assert geo.country("10.1.2.3", "ES", client_ip="89.160.20.1") == "ES"
    finally:
        geo.close()


def test_ipv6_client_on_ipv4_only_database(tmp_path: Path) -> None:
    writer = MMDBWriter(ip_version=4, database_type="GeoIP2-Country")
    writer.insert_network(IPSet(["81.2.69.0/24"]), {"country": {"iso_code": "DE"}})
    path = tmp_path / "v4.mmdb"
    writer.to_db_file(str(path))
    geo = Geo(replace(CONFIG, database=str(path)), ())
    try:
        assert geo.country("81.2.69.1", None) == "DE"
        assert geo.country("2a02:ff0::1", None) is None
    finally:
        geo.close()


# -- policy --------------------------------------------------------------------------------


def test_blocked_and_pinned(geo: Geo) -> None:
    assert geo.is_blocked("FR")
    assert not geo.is_blocked("DE")
    assert not geo.is_blocked(None)
    assert geo.is_pinned("IT") and geo.is_pinned("ES")
    assert not geo.is_pinned("MT")
    assert not geo.is_pinned(None)


def test_region_of(geo: Geo) -> None:
    assert geo.region_of("DE") == "eu-west"
    assert geo.region_of("MT") == "eu-south"
    assert geo.region_of("CA") == "na-east"
    assert geo.region_of("JP") == "eu-west"  # default_region for an unlisted country
    assert geo.region_of(None) == "eu-west"  # and for an unknown one


def test_region_order_with_fallback(geo: Geo) -> None:
    assert geo.region_order("eu-west", "DE") == ("eu-west", "eu-south", "na-east")
    assert geo.region_order("eu-south", "MT") == ("eu-south", "eu-west")
    assert geo.region_order("na-east", "US") == ("na-east",)
    assert geo.region_order("eu-west", None) == ("eu-west", "eu-south", "na-east")


def test_pinned_country_never_falls_back(geo: Geo) -> None:
    assert geo.region_order("eu-south", "IT") == ("eu-south",)
    # Even a caller passing the wrong region cannot move a pinned player abroad.
    assert geo.region_order("eu-west", "ES") == ("eu-south",)


def test_no_region_known_means_no_preference() -> None:
    geo = Geo(GeoConfig(regions={"eu-west": ("DE",)}), ())
    assert geo.region_of("JP") is None
    assert geo.region_order(None, "JP") == ()
    backends = [backend("a", "eu-west"), backend("b", None)]
    assert geo.candidates(backends, ()) == backends


def test_pinned_country_without_region_is_refused() -> None:
    with pytest.raises(ValueError, match="IT"):
        Geo(GeoConfig(regions={"eu-west": ("DE",)}, pinned_countries=frozenset({"IT"})), ())


def test_candidates_follow_the_region_order(geo: Geo) -> None:
    west = [backend("w1", "eu-west"), backend("w2", "eu-west")]
    south = [backend("s1", "eu-south")]
    na = [backend("n1", "na-east")]
    everyone = [*west, *south, *na]

    assert geo.candidates(everyone, geo.region_order("eu-west", "DE")) == west
    assert geo.candidates(everyone, geo.region_order("eu-south", "MT")) == south
    # eu-west has no eligible backend: its first fallback serves.
    assert geo.candidates([*south, *na], geo.region_order("eu-west", "DE")) == south
    assert geo.candidates(na, geo.region_order("eu-west", "DE")) == na
    # eu-south falls back to eu-west only, never to na-east.
    assert geo.candidates(na, geo.region_order("eu-south", "MT")) == []
    # Pinned: its own region or nothing (503), never eu-west.
    assert geo.candidates(everyone, geo.region_order("eu-south", "IT")) == south
    assert geo.candidates([*west, *na], geo.region_order("eu-south", "IT")) == []
    assert geo.candidates([], geo.region_order("eu-west", "DE")) == []


def test_header_to_candidates_end_to_end(geo: Geo) -> None:
    backends = [backend("w1", "eu-west"), backend("s1", "eu-south"), backend("n1", "na-east")]
    country = geo.country("10.0.0.1", "ca")
    assert country == "CA" and not geo.is_blocked(country)
    order = geo.region_order(geo.region_of(country), country)
    assert [b.id for b in geo.candidates(backends, order)] == ["n1"]


def test_the_balancer_and_geo_agree_on_trusted_peers_seen_through_a_dual_stack_listener() -> None:
    """A listener bound to [::] sees an IPv4 proxy as ::ffff:a.b.c.d: it is the same trusted
    proxy for X-Forwarded-For and PROXY headers (Runtime) as for the country header (Geo)."""
    config = parse_config({
        "listeners": [{"name": "public", "address": "[::]:0"}],
        "trusted_proxies": ["10.0.0.0/8"],
        "geo": {"country_header": "CF-IPCountry"},
        "routes": [{"name": "all", "pool": "web"}],
        "pools": {"web": {"backends": [{"id": "a", "address": "127.0.0.1:1"}]}},
    }, "test.yaml")
    runtime = Runtime(config, {"web": Pool(config.pools["web"])}, Stats(), lambda env: b"s" * 32)
    for peer in ("::ffff:10.1.2.3", "10.1.2.3"):
        assert runtime.is_trusted(peer) and runtime.geo.is_trusted(peer)
    for peer in ("::ffff:11.1.2.3", "fe80::1%eth0", "not an address"):
        assert not runtime.is_trusted(peer) and not runtime.geo.is_trusted(peer)
