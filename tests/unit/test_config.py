"""Config loading: defaults, every kind of error at its exact dotted path, and the example file."""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from balancer.config import (
    Address,
    AdminConfig,
    Config,
    ConfigError,
    ConsulConfig,
    HealthCheckConfig,
    Limits,
    MatchConfig,
    OutlierConfig,
    RetryConfig,
    Timeouts,
)
from balancer.config_file import check_main, load_config, parse_config, parse_duration
from balancer.plugins import (
    Plugin,
    PluginLoadError,
    Response,
    build_plugins,
    create_plugin,
    load_plugin_class,
    parse_plugin,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example.yaml"

MINIMAL: dict[str, Any] = {
    "listeners": [{"name": "public", "address": "127.0.0.1:0"}],
    "routes": [{"name": "all", "pool": "games"}],
    "pools": {"games": {"backends": [{"id": "g1", "address": "127.0.0.1:9000"}]}},
}


def config_with(**changes: Any) -> dict[str, Any]:
    """The minimal config with top-level keys replaced (None removes a key)."""
    data = copy.deepcopy(MINIMAL)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def pool_with(**settings: Any) -> dict[str, Any]:
    """The minimal config whose one pool has these settings added."""
    data = copy.deepcopy(MINIMAL)
    data["pools"]["games"].update(settings)
    return data


def errors_of(data: object, source: str = "test.yaml") -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source)
    return caught.value.errors


def error_at(data: object, path: str) -> str:
    """The message reported at `path`; fails if there is not exactly one there."""
    errors = errors_of(data)
    messages = [message for where, message in errors if where == path]
    assert len(messages) == 1, f"expected one error at {path}, got {errors}"
    return messages[0]


def write(tmp_path: Path, text: str, name: str = "balancer.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


# ---------------------------------------------------------------------------------- defaults


def test_minimal_config_gets_every_documented_default() -> None:
    config = parse_config(MINIMAL, "minimal.yaml")

    assert config.source == "minimal.yaml"
    assert config.admin == AdminConfig(Address("127.0.0.1", 9901), "BALANCER_ADMIN_TOKEN")
    assert config.workers == 1
    assert config.shutdown_timeout == 30.0
    assert config.trusted_proxies == ()
    assert config.limits == Limits()
    assert config.limits.max_body_bytes == 10485760
    assert config.geo is None and config.consul is None

    (listener,) = config.listeners
    assert (listener.name, listener.address, listener.tls, listener.proxy_protocol, listener.http2) == (
        "public", Address("127.0.0.1", 0), None, False, False,
    )
    assert config.limits.max_concurrent_streams == 100
    (route,) = config.routes
    assert route.match == MatchConfig(host=None, path_prefix="/", methods=None, headers=())
    assert route.plugins == ()

    pool = config.pools["games"]
    assert pool.name == "games"
    assert pool.balance == "least_conn"
    assert pool.hash_on == "client_ip" and pool.hash_balance_factor == 0.0
    assert pool.geo is False and pool.sticky is None and pool.health_check is None
    assert pool.outlier == OutlierConfig(5, 10.0, 300.0, 50)
    assert pool.slow_start == 0.0
    assert pool.retries == RetryConfig(2, frozenset({"connect_failure"}))
    assert pool.timeouts == Timeouts(2.0, 30.0, 4.0, 3600.0)
    assert pool.max_connections_per_backend == 2000
    assert pool.drain_timeout == 600.0
    assert pool.discovery is None
    (backend,) = pool.backends
    assert (backend.id, backend.address, backend.region, backend.weight, backend.source) == (
        "g1", Address("127.0.0.1", 9000), None, 1, "static",
    )


def test_empty_sections_mean_defaults() -> None:
    # A section whose keys are all commented out is null in YAML: it reads as "all defaults".
    config = parse_config(pool_with(health_check={}, outlier=None), "x.yaml")
    assert config.pools["games"].health_check == HealthCheckConfig()
    assert config.pools["games"].outlier == OutlierConfig()
    assert parse_config(config_with(limits=None, admin={}), "x.yaml").limits == Limits()


def test_null_turns_an_optional_feature_off() -> None:
    config = parse_config(pool_with(sticky=None, health_check=None, discovery=None), "x.yaml")
    pool = config.pools["games"]
    assert pool.sticky is None and pool.health_check is None and pool.discovery is None


# ---------------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("2s", 2.0), ("1.5s", 1.5), ("5m", 300.0), ("1h", 3600.0), ("90s", 90.0)],
)
def test_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    config = parse_config(pool_with(timeouts={"connect": text}), "x.yaml")
    assert config.pools["games"].timeouts.connect == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["10", 10, 1.5, "2 s", "1d", "s", "-1s", "", True, None, [1]])
def test_bad_durations_are_reported_at_their_key(raw: object) -> None:
    message = error_at(pool_with(timeouts={"response": raw}), "pools.games.timeouts.response")
    assert "duration" in message


def test_zero_duration_only_where_it_means_off() -> None:
    for zero in ("0s", "0ms", 0, "0"):
        assert parse_config(pool_with(slow_start=zero), "x.yaml").pools["games"].slow_start == 0.0
    assert "longer than 0" in error_at(pool_with(drain_timeout="0s"), "pools.games.drain_timeout")
    assert "longer than 0" in error_at(config_with(shutdown_timeout=0), "shutdown_timeout")


def test_parse_duration_raises_value_error() -> None:
    with pytest.raises(ValueError):
        parse_duration("ten seconds")


# ---------------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (config_with(listners=[]), "listners"),
        (config_with(limits={"max_header_byts": 1}), "limits.max_header_byts"),
        (pool_with(health_check={"intervall": "2s"}), "pools.games.health_check.intervall"),
        (pool_with(retries={"attempts": 2, "retry_on": ["reset"]}), "pools.games.retries.retry_on"),
        (
            config_with(routes=[{"name": "r", "pool": "games", "match": {"hots": "a.example.com"}}]),
            "routes.0.match.hots",
        ),
        (
            pool_with(backends=[{"id": "g1", "address": "127.0.0.1:1", "wieght": 2}]),
            "pools.games.backends.0.wieght",
        ),
        (pool_with(discovery={"consul": {"service": "s", "tag": ["x"]}}), "pools.games.discovery.consul.tag"),
        (config_with(consul={"register": {"service": "e", "check": {"tcp": 1}}}), "consul.register.check.tcp"),
    ],
)
def test_unknown_key_is_reported_at_its_own_full_path(data: dict[str, Any], path: str) -> None:
    assert error_at(data, path) == "unknown key"


# ---------------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("0.0.0.0:8080", Address("0.0.0.0", 8080)),
        ("[::]:8080", Address("::", 8080)),
        ("[::1]:0", Address("::1", 0)),
        ("localhost:80", Address("localhost", 80)),
        ("edge-1.internal.example:443", Address("edge-1.internal.example", 443)),
    ],
)
def test_listener_addresses(text: str, address: Address) -> None:
    config = parse_config(config_with(listeners=[{"name": "l", "address": text}]), "x.yaml")
    assert config.listeners[0].address == address


def test_ipv6_address_prints_with_brackets() -> None:
    assert str(Address("::1", 8080)) == "[::1]:8080"
    assert str(Address("10.0.0.1", 80)) == "10.0.0.1:80"


@pytest.mark.parametrize(
    "text",
    ["nohost", ":8080", "host:", "host:http", "host:70000", "::1:8080", "[::1]8080", "[nope]:80",
     "300.1.1.1:80", "bad host:80", 8080],
)
def test_bad_listener_address(text: object) -> None:
    error_at(config_with(listeners=[{"name": "l", "address": text}]), "listeners.0.address")


def test_port_zero_is_for_listeners_and_admin_not_backends() -> None:
    config = parse_config(config_with(admin={"address": "127.0.0.1:0"}), "x.yaml")
    assert config.admin.address == Address("127.0.0.1", 0)
    data = pool_with(backends=[{"id": "a", "address": "10.0.0.1:80"}, {"id": "b", "address": "10.0.0.2:0"}])
    assert "between 1 and 65535" in error_at(data, "pools.games.backends.1.address")


# ---------------------------------------------------------------------------------- top level


def test_workers() -> None:
    assert parse_config(config_with(workers="auto"), "x.yaml").workers == "auto"
    assert parse_config(config_with(workers=4), "x.yaml").workers == 4
    for bad in (0, -1, "all", True, 1.5):
        error_at(config_with(workers=bad), "workers")


def test_trusted_proxies() -> None:
    config = parse_config(config_with(trusted_proxies=["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"]), "x")
    assert config.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert "did you mean 10.0.0.0/8" in error_at(config_with(trusted_proxies=["10.0.0.5/8"]), "trusted_proxies.0")
    error_at(config_with(trusted_proxies=["10.0.0.0/8", "proxy.local"]), "trusted_proxies.1")
    error_at(config_with(trusted_proxies="10.0.0.0/8"), "trusted_proxies")


def test_limits_must_be_positive() -> None:
    errors = errors_of(config_with(limits={"max_url_bytes": 0, "max_header_count": -5, "max_connections": "many"}))
    assert {path for path, _ in errors} == {
        "limits.max_url_bytes", "limits.max_header_count", "limits.max_connections",
    }
    assert parse_config(config_with(limits={"min_body_rate": 0}), "x").limits.min_body_rate == 0


@pytest.mark.parametrize("missing", ["listeners", "routes", "pools"])
def test_required_sections(missing: str) -> None:
    assert error_at(config_with(**{missing: None}), missing) == "required key is missing"


def test_required_sections_must_not_be_empty() -> None:
    error_at(config_with(listeners=[]), "listeners")
    error_at(config_with(routes=[]), "routes")
    error_at(config_with(pools={}), "pools")


def test_not_a_mapping_at_the_top() -> None:
    assert errors_of(["listeners"])[0][0] == "(file)"
    assert errors_of(None)[0][0] == "(file)"


def test_wrong_types_are_reported() -> None:
    errors = dict(
        errors_of(
            config_with(
                listeners=[{"name": "l", "address": "127.0.0.1:0", "proxy_protocol": "yes"}],
                limits=["max_url_bytes"],
                admin={"token_env": "not a var"},
            )
        )
    )
    assert errors["listeners.0.proxy_protocol"].startswith("expected true or false")
    assert errors["limits"].startswith("expected a mapping")
    http2 = dict(errors_of(config_with(
        listeners=[{"name": "l", "address": "127.0.0.1:0", "http2": "on"}],
        limits={"max_concurrent_streams": 0})))
    assert http2["listeners.0.http2"].startswith("expected true or false")
    assert "limits.max_concurrent_streams" in http2
    assert errors["admin.token_env"].startswith("expected an environment variable name")


# ---------------------------------------------------------------------------------- cross checks


def test_route_naming_a_missing_pool() -> None:
    data = config_with(routes=[{"name": "a", "pool": "games"}, {"name": "b", "pool": "gmaes"}])
    assert error_at(data, "routes.1.pool") == "no pool named 'gmaes' under pools"


def test_route_naming_a_broken_pool_gets_no_second_error() -> None:
    data = config_with(pools={"games": "oops"})
    assert [path for path, _ in errors_of(data)] == ["pools.games"]


def test_duplicate_backend_id() -> None:
    data = pool_with(
        backends=[
            {"id": "eu-1", "address": "10.0.0.1:80"},
            {"id": "eu-1", "address": "10.0.0.2:80"},
        ]
    )
    assert "duplicate id 'eu-1'" in error_at(data, "pools.games.backends.1.id")


def test_duplicate_listener_and_route_names() -> None:
    data = config_with(
        listeners=[{"name": "a", "address": "127.0.0.1:0"}, {"name": "a", "address": "127.0.0.1:0"}],
        routes=[{"name": "r", "pool": "games"}, {"name": "r", "pool": "games"}],
    )
    errors = dict(errors_of(data))
    assert "duplicate name 'a'" in errors["listeners.1.name"]
    assert "duplicate name 'r'" in errors["routes.1.name"]


def test_pool_needs_backends_or_discovery() -> None:
    data = config_with(pools={"games": {"balance": "random"}})
    assert error_at(data, "pools.games") == "has neither backends nor discovery"
    config = parse_config(config_with(pools={"games": {"discovery": {"consul": {"service": "games"}}}}), "x")
    assert config.pools["games"].discovery.service == "games"
    # Discovery without a consul section uses Consul's documented defaults.
    assert config.consul == ConsulConfig()


def test_pool_names_are_url_safe() -> None:
    data = config_with(pools={"games/live": {"backends": [{"id": "a", "address": "10.0.0.1:80"}]}})
    assert "bad pool name" in error_at(data, "pools.games/live")


def test_several_errors_in_one_file_are_all_reported() -> None:
    data = config_with(
        listeners=[{"name": "l", "address": "nowhere"}],
        limits={"max_header_byts": 1, "header_timeout": "10"},
        routes=[{"name": "r", "pool": "nope"}],
        pools={
            "games": {
                "balance": "fastest",
                "timeouts": {"connect": "2"},
                "backends": [{"id": "a", "address": "10.0.0.1:80"}, {"id": "a", "address": "10.0.0.1:0"}],
            }
        },
    )
    assert sorted(path for path, _ in errors_of(data)) == sorted(
        [
            "listeners.0.address",
            "limits.max_header_byts",
            "limits.header_timeout",
            "routes.0.pool",
            "pools.games.balance",
            "pools.games.timeouts.connect",
            "pools.games.backends.1.address",
            "pools.games.backends.1.id",
        ]
    )


# ---------------------------------------------------------------------------------- routes


def test_route_match_is_normalised() -> None:
    route = {
        "name": "live",
        "pool": "games",
        "match": {
            "host": "Live.Example.COM",
            "path_prefix": "/ws/",
            "methods": ["get", "Post"],
            "headers": {"X-Client": "app", "X-Version": 2},
        },
    }
    (parsed,) = parse_config(config_with(routes=[route]), "x").routes
    assert parsed.match == MatchConfig(
        host="live.example.com",
        path_prefix="/ws/",
        methods=frozenset({"GET", "POST"}),
        headers=(("x-client", "app"), ("x-version", "2")),
    )


def test_route_match_errors() -> None:
    route = {
        "name": "r",
        "pool": "games",
        "match": {"host": "a.example.com:8080", "path_prefix": "ws", "methods": [], "headers": {"X-A": True}},
    }
    errors = dict(errors_of(config_with(routes=[route])))
    assert set(errors) == {
        "routes.0.match.host", "routes.0.match.path_prefix", "routes.0.match.methods", "routes.0.match.headers.X-A",
    }


def test_wildcard_host() -> None:
    route = {"name": "r", "pool": "games", "match": {"host": "*.Example.com"}}
    assert parse_config(config_with(routes=[route]), "x").routes[0].match.host == "*.example.com"
    route["match"] = {"host": "a.*.example.com"}
    error_at(config_with(routes=[route]), "routes.0.match.host")


# ---------------------------------------------------------------------------------- pools


def test_consistent_hash_settings() -> None:
    pool = parse_config(
        pool_with(balance="consistent_hash", hash_on="header:X-Player-Id", hash_balance_factor=1.25), "x"
    ).pools["games"]
    assert (pool.balance, pool.hash_on, pool.hash_balance_factor) == ("consistent_hash", "header:x-player-id", 1.25)
    for good in ("cookie:SESSION", "query:player", "client_ip"):
        assert parse_config(pool_with(hash_on=good), "x").pools["games"].hash_on == good
    for bad in ("header:", "body:x", "client", "cookie:a b"):
        error_at(pool_with(balance="consistent_hash", hash_on=bad), "pools.games.hash_on")
    for bad in (1, 0.5, -2, "1.25"):
        error_at(pool_with(hash_balance_factor=bad), "pools.games.hash_balance_factor")
    error_at(pool_with(balance="fastest"), "pools.games.balance")


def test_ewma_settings() -> None:
    pool = parse_config(pool_with(balance="ewma", ewma_decay="30s"), "x").pools["games"]
    assert (pool.balance, pool.ewma_decay) == ("ewma", 30.0)
    assert parse_config(pool_with(balance="ewma"), "x").pools["games"].ewma_decay == 10.0
    for bad in (10, "0", "fast"):
        error_at(pool_with(balance="ewma", ewma_decay=bad), "pools.games.ewma_decay")


def test_health_check_http_and_tcp() -> None:
    check = parse_config(pool_with(health_check={"path": "/ready", "expect_status": "200-299"}), "x")
    assert check.pools["games"].health_check == HealthCheckConfig(path="/ready", expect_status=(200, 299))
    tcp = parse_config(pool_with(health_check={"tcp": True, "interval": "500ms"}), "x").pools["games"].health_check
    assert (tcp.tcp, tcp.path, tcp.interval) == (True, None, 0.5)
    single = parse_config(pool_with(health_check={"expect_status": 204}), "x").pools["games"].health_check
    assert single.expect_status == (204, 204)

    errors = dict(
        errors_of(
            pool_with(
                health_check={"tcp": True, "path": "/x", "expect_status": "399-200", "healthy_threshold": 0}
            )
        )
    )
    assert set(errors) == {
        "pools.games.health_check.tcp",
        "pools.games.health_check.expect_status",
        "pools.games.health_check.healthy_threshold",
    }


def test_retries() -> None:
    retries = parse_config(pool_with(retries={"attempts": 3, "on": ["reset", 502, "503", "timeout"]}), "x")
    assert retries.pools["games"].retries == RetryConfig(3, frozenset({"reset", "502", "503", "timeout"}))
    assert "at least 1" in error_at(pool_with(retries={"attempts": 0}), "pools.games.retries.attempts")
    error_at(pool_with(retries={"on": ["reset", 500]}), "pools.games.retries.on.1")


def test_retries_on_key_survives_yaml(tmp_path: Path) -> None:
    # Plain YAML 1.1 reads the key `on` as the boolean True.
    path = write(
        tmp_path,
        """
        listeners: [{name: l, address: "127.0.0.1:0"}]
        routes: [{name: r, pool: p}]
        pools:
          p:
            retries: {attempts: 2, on: [connect_failure, 502]}
            backends: [{id: a, address: "10.0.0.1:80"}]
        """,
    )
    assert load_config(path).pools["p"].retries.on == frozenset({"connect_failure", "502"})


def test_sticky() -> None:
    sticky = parse_config(pool_with(sticky={"cookie": "LB", "ttl": "1h", "on_failure": "fail"}), "x")
    assert sticky.pools["games"].sticky.ttl == 3600.0
    assert sticky.pools["games"].sticky.on_failure == "fail"
    assert sticky.pools["games"].sticky.secret_env == "STICKY_SECRET"
    errors = dict(errors_of(pool_with(sticky={"ttl": "1h", "on_failure": "retry"})))
    assert errors["pools.games.sticky.cookie"] == "required key is missing"
    assert "rebalance, fail" in errors["pools.games.sticky.on_failure"]


def test_outlier() -> None:
    error_at(pool_with(outlier={"base_ejection": "1m", "max_ejection": "30s"}), "pools.games.outlier.max_ejection")
    error_at(pool_with(outlier={"max_ejected_percent": 101}), "pools.games.outlier.max_ejected_percent")
    error_at(pool_with(outlier={"consecutive_failures": 0}), "pools.games.outlier.consecutive_failures")


def test_discovery() -> None:
    discovery = {"consul": {"service": "live", "tags": ["prod", "eu"], "region_from": "tag:region="}}
    pool = parse_config(pool_with(discovery=discovery), "x").pools["games"]
    assert pool.discovery.tags == ("prod", "eu")
    assert pool.discovery.region_from == "tag:region="
    assert pool.discovery.weight_from == "weights"
    no_weights = {"consul": {"service": "live", "weight_from": None}}
    assert parse_config(pool_with(discovery=no_weights), "x").pools["games"].discovery.weight_from is None

    errors = dict(errors_of(pool_with(discovery={"consul": {"region_from": "label:x", "weight_from": "meta"}})))
    assert set(errors) == {
        "pools.games.discovery.consul.service",
        "pools.games.discovery.consul.region_from",
        "pools.games.discovery.consul.weight_from",
    }
    assert error_at(pool_with(discovery={}), "pools.games.discovery.consul") == "required key is missing"


def test_consul_section() -> None:
    consul = {
        "address": "https://consul.internal:8501",
        "datacenter": "dc2",
        "wait": "5m",
        "register": {"service": "edge", "check": {"interval": "5s"}},
    }
    parsed = parse_config(config_with(consul=consul), "x").consul
    assert parsed.address == "https://consul.internal:8501" and parsed.wait == 300.0
    assert parsed.register.service == "edge"
    assert (parsed.register.check.http, parsed.register.check.interval) == ("/healthz", 5.0)
    error_at(config_with(consul={"address": "consul:8500"}), "consul.address")
    assert "at most 10m" in error_at(config_with(consul={"wait": "11m"}), "consul.wait")
    error_at(config_with(consul={"register": {}}), "consul.register.service")


# ---------------------------------------------------------------------------------- geo


GEO = {
    "regions": {"eu-west": ["de", "fr"], "eu-south": ["IT", "ES"], "na": ["US"]},
    "fallback": {"eu-south": ["eu-west"], "eu-west": ["eu-south", "na"]},
    "default_region": "eu-west",
    "pinned_countries": ["it"],
    "blocked_countries": ["kp"],
}


def test_geo_is_normalised() -> None:
    geo = parse_config(config_with(geo=GEO), "x").geo
    assert geo.regions == {"eu-west": ("DE", "FR"), "eu-south": ("IT", "ES"), "na": ("US",)}
    assert geo.fallback == {"eu-south": ("eu-west",), "eu-west": ("eu-south", "na")}
    assert geo.pinned_countries == frozenset({"IT"})
    assert geo.blocked_countries == frozenset({"KP"})
    assert geo.country_header == "CF-IPCountry" and geo.database is None


def test_geo_errors() -> None:
    geo = {
        "regions": {"eu": ["DE", "GER"], "us": ["US", "DE"]},
        "fallback": {"eu": ["eu", "mars"], "moon": ["eu"]},
        "default_region": "atlantis",
        "pinned_countries": ["CA"],
        "blocked_countries": [1],
    }
    errors = dict(errors_of(config_with(geo=geo)))
    assert set(errors) == {
        "geo.regions.eu.1",
        "geo.regions.us",
        "geo.fallback.eu.1",
        "geo.fallback.moon",
        "geo.fallback.eu",
        "geo.default_region",
        "geo.pinned_countries.0",
        "geo.blocked_countries.0",
    }
    assert "already in region eu" in errors["geo.regions.us"]


def test_norway_is_a_country_not_false(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        listeners: [{name: l, address: "127.0.0.1:0"}]
        geo: {regions: {nordics: [NO, SE]}, blocked_countries: [no]}
        routes: [{name: r, pool: p}]
        pools: {p: {backends: [{id: a, address: "10.0.0.1:80"}]}}
        """,
    )
    geo = load_config(path).geo
    assert geo.regions == {"nordics": ("NO", "SE")}
    assert geo.blocked_countries == frozenset({"NO"})


def test_geo_pool_needs_geo_regions() -> None:
    backends = [{"id": "a", "address": "10.0.0.1:80", "region": "eu-west"}]
    assert "geo section" in error_at(pool_with(geo=True, backends=backends), "pools.games.geo")
    config = parse_config({**pool_with(geo=True, backends=backends), "geo": GEO}, "x")
    assert config.pools["games"].geo is True


def test_geo_pool_backends_name_known_regions() -> None:
    backends = [{"id": "a", "address": "10.0.0.1:80", "region": "mars"}, {"id": "b", "address": "10.0.0.2:80"}]
    errors = dict(errors_of({**pool_with(geo=True, backends=backends), "geo": GEO}))
    assert "unknown region 'mars'" in errors["pools.games.backends.0.region"]
    assert errors["pools.games.backends.1.region"] == "required in a pool with geo: true"


def test_geo_database_is_resolved_and_checked(tmp_path: Path) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-Country")
    writer.insert_network(IPSet(["192.0.2.0/24"]), {"country": {"iso_code": "DE"}})
    writer.to_db_file(str(tmp_path / "countries.mmdb"))
    (tmp_path / "garbage.mmdb").write_bytes(b"not a database")
    source = str(tmp_path / "balancer.yaml")

    geo = parse_config(config_with(geo={"database": "countries.mmdb"}), source).geo
    assert geo.database == str(tmp_path / "countries.mmdb")
    with pytest.raises(ConfigError) as caught:
        parse_config(config_with(geo={"database": "garbage.mmdb"}), source)
    assert caught.value.errors[0][0] == "geo.database"
    assert "not a MaxMind database" in caught.value.errors[0][1]
    with pytest.raises(ConfigError) as caught:
        parse_config(config_with(geo={"database": "missing.mmdb"}), source)
    assert caught.value.errors == [("geo.database", f"no such file: {tmp_path / 'missing.mmdb'}")]


# ---------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    for name in ("casino.example.com", "live.example.com"):
        cert = ca.issue_cert(name)
        cert.cert_chain_pems[0].write_to_path(str(folder / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(folder / f"{name}.key"))
    return folder


def test_tls_files_resolve_against_the_config_folder(certificates: Path) -> None:
    tls = {
        "certificate": "casino.example.com.pem",
        "key": "casino.example.com.key",
        "sni": {"Live.Example.com": {"certificate": "live.example.com.pem", "key": "live.example.com.key"}},
    }
    data = config_with(listeners=[{"name": "tls", "address": "127.0.0.1:0", "tls": tls}])
    parsed = parse_config(data, str(certificates / "balancer.yaml")).listeners[0].tls
    assert parsed.certificate == str(certificates / "casino.example.com.pem")
    assert parsed.key == str(certificates / "casino.example.com.key")
    assert parsed.sni == (
        ("live.example.com", str(certificates / "live.example.com.pem"), str(certificates / "live.example.com.key")),
    )


def test_tls_missing_files_and_mismatched_key(certificates: Path) -> None:
    listeners = [
        {"name": "a", "address": "127.0.0.1:0", "tls": {"certificate": "nope.pem", "key": "casino.example.com.key"}},
        {"name": "b", "address": "127.0.0.1:0", "tls": {"certificate": "casino.example.com.pem", "key": "live.example.com.key"}},
        {"name": "c", "address": "127.0.0.1:0", "tls": {"certificate": "casino.example.com.pem"}},
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config(config_with(listeners=listeners), str(certificates / "balancer.yaml"))
    errors = dict(caught.value.errors)
    assert errors["listeners.0.tls.certificate"].startswith("no such file")
    assert errors["listeners.1.tls"].startswith("cannot use this certificate and key")
    assert errors["listeners.2.tls.key"] == "required key is missing"


# ---------------------------------------------------------------------------------- plugins


PLUGIN_MODULE = '''
from balancer.plugins import Plugin, Response


class Limiter(Plugin):
    @classmethod
    def parse_settings(cls, raw, path, errors):
        if not isinstance(raw, dict) or not isinstance(raw.get("rate"), int):
            errors.append((f"{path}.rate", "expected an integer"))
            return None
        return raw["rate"]

    async def on_request(self, request):
        return Response(429, "slow down", retry_after=1)


class HeaderOnly(Plugin):
    def on_response(self, request, response_head):
        response_head.append(b"x-plugin: 1\\r\\n")


class AsyncResponseHook(Plugin):
    async def on_response(self, request, response_head):
        pass


class NotAPlugin:
    pass
'''


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "casino_test_plugins.py").write_text(PLUGIN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "casino_test_plugins"
    sys.modules.pop("casino_test_plugins", None)


def route_with_plugins(*plugins: object) -> dict[str, Any]:
    return config_with(routes=[{"name": "r", "pool": "games", "plugins": list(plugins)}])


def test_third_party_plugin_by_dotted_path(plugin_module: str) -> None:
    name = f"{plugin_module}:Limiter"
    (route,) = parse_config(route_with_plugins({name: {"rate": 20}}), "x").routes
    (plugin,) = route.plugins
    assert (plugin.name, plugin.settings) == (name, 20)
    instance = create_plugin(plugin)
    assert isinstance(instance, Plugin) and instance.settings == 20
    assert instance.on_response is None  # hooks a plugin does not define are skipped, not called
    assert error_at(route_with_plugins({name: {"rate": "fast"}}), f"routes.0.plugins.0.{name}.rate") == (
        "expected an integer"
    )


def test_build_plugins_makes_instances_in_route_order(plugin_module: str) -> None:
    data = route_with_plugins({f"{plugin_module}:HeaderOnly": None}, {f"{plugin_module}:Limiter": {"rate": 5}})

    class CompiledRoute:  # what the runtime passes: anything with the RouteConfig as `.config`
        config = parse_config(data, "x").routes[0]

    header_only, limiter = build_plugins(CompiledRoute())
    assert header_only.on_request is None
    head: list[bytes] = []
    header_only.on_response(None, head)
    assert head == [b"x-plugin: 1\r\n"]
    answer = asyncio.run(limiter.on_request(None))
    assert answer == Response(429, "slow down", retry_after=1)


def test_async_on_response_is_refused(plugin_module: str) -> None:
    name = f"{plugin_module}:AsyncResponseHook"
    assert "must be a plain method" in error_at(route_with_plugins({name: {}}), f"routes.0.plugins.0.{name}")


def test_plugin_errors_are_reported_at_the_plugin(plugin_module: str) -> None:
    data = route_with_plugins(
        {"no_such_plugin": {}},
        {f"{plugin_module}:Missing": {}},
        {f"{plugin_module}:NotAPlugin": {}},
        {"nowhere.module:Class": {}},
        {"a": {}, "b": {}},
        "rate_limit",
    )
    errors = dict(errors_of(data))
    assert errors["routes.0.plugins.0.no_such_plugin"] == "unknown plugin"
    assert errors[f"routes.0.plugins.1.{plugin_module}:Missing"].startswith("unknown plugin")
    assert "not a balancer.plugins.Plugin" in errors[f"routes.0.plugins.2.{plugin_module}:NotAPlugin"]
    assert errors["routes.0.plugins.3.nowhere.module:Class"] == "unknown plugin"
    assert "exactly one key" in errors["routes.0.plugins.4"]
    assert "one-key mapping" in errors["routes.0.plugins.5"]


def test_default_parse_settings_and_loader() -> None:
    errors: list[tuple[str, str]] = []
    assert Plugin.parse_settings(None, "p", errors) == {}
    assert Plugin.parse_settings({"a": 1}, "p", errors) == {"a": 1}
    assert errors == []
    Plugin.parse_settings([1], "p", errors)
    assert errors and errors[0][0] == "p"
    errors = []
    assert parse_plugin("Bad Name", {}, "routes.0.plugins.0", errors) is None
    assert errors == [("routes.0.plugins.0.Bad Name", "unknown plugin (a built-in name, or package.module:Class)")]


def test_broken_plugin_module_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "casino_broken_plugin.py").write_text("import casino_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    errors = dict(errors_of(route_with_plugins({"casino_broken_plugin:X": {}})))
    assert "cannot load plugin" in errors["routes.0.plugins.0.casino_broken_plugin:X"]
    with pytest.raises(PluginLoadError, match="casino_missing_dependency"):
        load_plugin_class("casino_broken_plugin:X")


# ---------------------------------------------------------------------------------- files and check


def test_example_yaml_is_valid_and_uses_every_section() -> None:
    config = load_config(str(EXAMPLE))
    assert isinstance(config, Config)
    assert config.source == str(EXAMPLE)
    assert config.geo is not None and config.consul is not None and config.consul.register is not None
    pool = config.pools["live-games"]
    assert pool.sticky and pool.health_check and pool.discovery and pool.geo
    assert pool.retries.on == frozenset({"connect_failure", "reset", "502", "503", "504"})
    assert pool.timeouts.websocket_idle == 3600.0


def test_check_main_on_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_main(str(EXAMPLE)) == 0
    captured = capsys.readouterr()
    assert captured.err == ""


def test_check_main_lists_every_error_one_per_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path,
        """
        listeners: [{name: l, address: "127.0.0.1:0"}]
        limits: {max_header_byts: 10}
        routes: [{name: r, pool: nope}]
        pools: {p: {backends: [{id: a, address: "10.0.0.1:80"}]}}
        """,
    )
    assert check_main(path) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"{path}: limits.max_header_byts: unknown key",
        f"{path}: routes.0.pool: no pool named 'nope' under pools",
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == path
    assert caught.value.errors[0][0] == "(file)"
    assert "No such file" in caught.value.errors[0][1]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "listeners:\n  - name: a\n    address: [oops\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    ((where, message),) = caught.value.errors
    assert where.startswith("line ")
    assert message.startswith("invalid YAML")


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, ""))
    assert caught.value.errors[0][0] == "(file)"


def test_duplicate_yaml_keys_are_errors(tmp_path: Path) -> None:
    # PyYAML would keep only the second pool `p`, silently dropping the first.
    path = write(
        tmp_path,
        """
        listeners: [{name: l, address: "127.0.0.1:0"}]
        routes: [{name: r, pool: p}]
        pools:
          p: {backends: [{id: a, address: "10.0.0.1:80"}]}
          p: {backends: [{id: b, address: "10.0.0.2:80"}]}
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.errors == [("line 6", "duplicate key 'p'")]


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    # An explicit key next to `<<: *anchor` overrides the merged one; that is not a duplicate.
    path = write(
        tmp_path,
        """
        listeners: [{name: l, address: "127.0.0.1:0"}]
        routes: [{name: r, pool: a}, {name: s, pool: b}]
        pools:
          a: {timeouts: &fast {connect: 500ms, response: 5s}, backends: [{id: a, address: "10.0.0.1:80"}]}
          b: {timeouts: {<<: *fast, response: 10s}, backends: [{id: b, address: "10.0.0.2:80"}]}
        """,
    )
    timeouts = load_config(path).pools["b"].timeouts
    assert (timeouts.connect, timeouts.response) == (0.5, 10.0)


def test_config_error_lines_format() -> None:
    error = ConfigError("cfg.yaml", [("limits.max_header_byts", "unknown key")])
    assert error.lines() == ["cfg.yaml: limits.max_header_byts: unknown key"]
    assert str(error) == "cfg.yaml: limits.max_header_byts: unknown key"


# ------------------------------------------------------------------ canary splits and mirrors


def two_pools(route: dict[str, Any]) -> dict[str, Any]:
    """The minimal config with pools games and canary, and this one route."""
    data = copy.deepcopy(MINIMAL)
    data["pools"]["canary"] = {"backends": [{"id": "c1", "address": "127.0.0.1:9001"}]}
    data["routes"] = [{"name": "all", **route}]
    return data


SPLIT = [{"pool": "games", "weight": 95}, {"pool": "canary", "weight": 5}]


def test_split_settings() -> None:
    route = parse_config(two_pools({"split": SPLIT}), "x").routes[0]
    assert route.pool is None
    assert route.pools == ("games", "canary")
    assert [(s.pool, s.weight) for s in route.split] == [("games", 95), ("canary", 5)]
    assert route.split_on == "cookie"
    assert (route.split_cookie.name, route.split_cookie.ttl, route.split_cookie.secret_env) == (
        "LB_SPLIT", 86400.0, "STICKY_SECRET")
    hashed = parse_config(two_pools({"split": SPLIT, "split_on": "hash:header:X-Player-Id",
                                     "split_cookie": {"name": "CANARY", "ttl": "72h"}}), "x")
    assert hashed.routes[0].split_on == "hash:header:x-player-id"
    assert hashed.routes[0].split_cookie.ttl == 72 * 3600.0
    for good in ("hash:client_ip", "hash:cookie:player", "hash:query:p"):
        assert parse_config(two_pools({"split": SPLIT, "split_on": good}), "x").routes[0].split_on == good


def test_split_errors_name_their_key() -> None:
    assert "either pool or split" in error_at(two_pools({"pool": "games", "split": SPLIT}), "routes.0.pool")
    assert error_at(two_pools({}), "routes.0.pool") == "required key is missing"
    assert "no pool named 'nope'" in error_at(
        two_pools({"split": [SPLIT[0], {"pool": "nope", "weight": 1}]}), "routes.0.split.1.pool")
    assert "at least two" in error_at(two_pools({"split": [SPLIT[0]]}), "routes.0.split")
    assert "add up to 0" in error_at(
        two_pools({"split": [{"pool": "games", "weight": 0}, {"pool": "canary", "weight": 0}]}), "routes.0.split")
    assert "already at" in error_at(
        two_pools({"split": [SPLIT[0], {"pool": "games", "weight": 1}]}), "routes.0.split.1.pool")
    error_at(two_pools({"split": [SPLIT[0], {"pool": "canary", "weight": -1}]}), "routes.0.split.1.weight")
    error_at(two_pools({"split": [SPLIT[0], {"pool": "canary"}]}), "routes.0.split.1.weight")
    error_at(two_pools({"split": [SPLIT[0], {"pool": "canary", "weight": 1, "wieght": 2}]}),
             "routes.0.split.1.wieght")
    for bad in ("hash", "hash:body:x", "header:X-Player-Id", "random"):
        error_at(two_pools({"split": SPLIT, "split_on": bad}), "routes.0.split_on")
    assert "only has a meaning with split" in error_at(two_pools({"pool": "games", "split_on": "cookie"}),
                                                       "routes.0.split_on")
    error_at(two_pools({"split": SPLIT, "split_cookie": {"name": "a b"}}), "routes.0.split_cookie.name")
    error_at(two_pools({"split": SPLIT, "split_cookie": {"ttl": 5}}), "routes.0.split_cookie.ttl")


def test_a_split_cookie_must_not_be_a_sides_sticky_cookie() -> None:
    data = two_pools({"split": SPLIT, "split_cookie": {"name": "LB_GAME"}})
    data["pools"]["canary"]["sticky"] = {"cookie": "LB_GAME"}
    assert "sticky cookie of pool canary" in error_at(data, "routes.0.split_cookie.name")
    data["routes"][0]["split_cookie"] = {"name": "LB_SPLIT"}
    assert parse_config(data, "x").routes[0].split_cookie.name == "LB_SPLIT"


def test_the_sides_of_a_split_need_sticky_cookies_of_their_own() -> None:
    data = two_pools({"split": SPLIT})
    data["pools"]["games"]["sticky"] = {"cookie": "LB_GAME"}
    data["pools"]["canary"]["sticky"] = {"cookie": "LB_GAME"}
    assert "both name their sticky cookie LB_GAME" in error_at(data, "routes.0.split.1.pool")
    data["pools"]["canary"]["sticky"] = {"cookie": "LB_GAME_V2"}
    assert parse_config(data, "x").routes[0].split


def test_mirror_settings_and_errors() -> None:
    route = parse_config(two_pools({"pool": "games", "mirror": {"pool": "canary", "percent": 10}}), "x").routes[0]
    assert route.mirror is not None
    assert (route.mirror.pool, route.mirror.percent, route.mirror.max_in_flight) == ("canary", 10.0, 100)
    assert parse_config(two_pools({"pool": "games", "mirror": {"pool": "canary", "percent": 0.5,
                                                               "max_in_flight": 8}}), "x").routes[0].mirror.max_in_flight == 8
    for bad in (0, 101, "10%", True):
        error_at(two_pools({"pool": "games", "mirror": {"pool": "canary", "percent": bad}}), "routes.0.mirror.percent")
    error_at(two_pools({"pool": "games", "mirror": {"pool": "canary"}}), "routes.0.mirror.percent")
    error_at(two_pools({"pool": "games", "mirror": {"pool": "canary", "percent": 5, "max_in_flight": 0}}),
             "routes.0.mirror.max_in_flight")
    assert "no pool named" in error_at(two_pools({"pool": "games", "mirror": {"pool": "x", "percent": 5}}),
                                       "routes.0.mirror.pool")
    assert "serves this route" in error_at(two_pools({"pool": "games", "mirror": {"pool": "games", "percent": 5}}),
                                           "routes.0.mirror.pool")
    assert "serves this route" in error_at(two_pools({"split": SPLIT, "mirror": {"pool": "canary", "percent": 5}}),
                                           "routes.0.mirror.pool")


def test_check_prints_split_errors_with_their_key_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, """
        listeners: [{name: public, address: 127.0.0.1:0}]
        routes:
          - name: games
            split: [{pool: v1, weight: 95}, {pool: v3, weight: 5}]
            mirror: {pool: v2, percent: 200}
        pools:
          v1: {backends: [{id: a, address: 127.0.0.1:9000}]}
          v2: {backends: [{id: b, address: 127.0.0.1:9001}]}
        """)
    assert check_main(path) == 2
    err = capsys.readouterr().err.splitlines()
    assert f"{path}: routes.0.split.1.pool: no pool named 'v3' under pools" in err
    assert f"{path}: routes.0.mirror.percent: must be more than 0 and at most 100, got 200" in err
