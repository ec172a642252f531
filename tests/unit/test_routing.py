"""The route table (balancer.routing): host / path prefix / method / header matching, first
match wins (docs/configuration.md, `routes`). Pure: routes are built from the config types, no sockets."""

from __future__ import annotations

import pytest

from balancer.config import MatchConfig, RouteConfig
from balancer.routing import Route, RouteTable


def route(name: str, host: str | None = None, path_prefix: str = "/",
          methods: list[str] | None = None, headers: dict[str, str] | None = None) -> Route:
    match = MatchConfig(
        host=host, path_prefix=path_prefix,
        methods=frozenset(methods) if methods is not None else None,
        headers=tuple((k.lower(), v) for k, v in (headers or {}).items()),
    )
    return Route(RouteConfig(name=name, pool=f"pool-{name}", match=match))


def headers(**values: str) -> list[tuple[bytes, bytes, bytes]]:
    out = []
    for name, value in values.items():
        sent = name.replace("_", "-").encode()
        out.append((sent.lower(), sent, value.encode()))
    return out


def matched(table: RouteTable, host: str, path: bytes = b"/", method: bytes = b"GET",
            hdrs: list[tuple[bytes, bytes, bytes]] | None = None) -> str | None:
    found = table.match(host, path, method, hdrs or [])
    return found.name if found is not None else None


TABLE = RouteTable([
    route("app-clients", headers={"X-Client": "app"}),
    route("api", host="api.example.com"),
    route("wallet-writes", host="wallet.example.com", methods=["POST", "PUT"]),
    route("any-example", host="*.example.com"),
    route("static", host="cdn.test", path_prefix="/static/"),
    route("pay-post-only", host="pay.test", methods=["POST"]),
])


@pytest.mark.parametrize("host, path, method, hdrs, expected", [
    ("api.example.com", b"/", b"GET", None, "api"),
    ("a.example.com", b"/", b"GET", None, "any-example"),
    ("deep.a.example.com", b"/", b"GET", None, "any-example"),
    ("example.com", b"/", b"GET", None, None),  # the wildcard needs a label before the dot
    ("badexample.com", b"/", b"GET", None, None),
    ("wallet.example.com", b"/withdraw", b"POST", None, "wallet-writes"),
    ("wallet.example.com", b"/balance", b"GET", None, "any-example"),  # falls to a later route
    ("cdn.test", b"/static/logo.png", b"GET", None, "static"),
    ("cdn.test", b"/static", b"GET", None, None),  # a prefix is a prefix, "/static" is not "/static/"
    ("cdn.test", b"/other", b"GET", None, None),
    ("pay.test", b"/", b"POST", None, "pay-post-only"),
    ("pay.test", b"/", b"GET", None, None),  # unlisted method and no later route: 404
    ("api.example.com", b"/", b"GET", headers(X_Client="app"), "app-clients"),  # first match wins
    ("api.example.com", b"/", b"GET", headers(X_Client="web"), "api"),
    ("api.example.com", b"/", b"GET", headers(X_Client="App"), "api"),  # values match exactly
    ("nowhere.test", b"/", b"GET", headers(X_Client="app"), "app-clients"),
])
def test_match(host: str, path: bytes, method: bytes, hdrs, expected: str | None) -> None:
    assert matched(TABLE, host, path, method, hdrs) == expected


def test_header_match_needs_every_listed_header() -> None:
    table = RouteTable([route("both", headers={"X-Client": "app", "X-Env": "prod"})])
    assert matched(table, "h", hdrs=headers(X_Client="app", X_Env="prod")) == "both"
    assert matched(table, "h", hdrs=headers(X_Client="app")) is None
    # A repeated header matches when one of its values does.
    assert matched(table, "h", hdrs=headers(X_Env="prod") + headers(X_Client="web")
                   + headers(X_Client="app")) == "both"


def test_first_match_wins_over_a_more_specific_later_route() -> None:
    table = RouteTable([route("catch-all"), route("api", host="api.example.com")])
    assert matched(table, "api.example.com") == "catch-all"


def test_a_route_without_match_takes_everything() -> None:
    table = RouteTable([route("all")])
    assert matched(table, "", b"/anything", b"DELETE") == "all"


def test_serves_host_names_only_configured_hosts() -> None:
    """For absolute-form targets: a host-less route must not turn the balancer into an open proxy."""
    table = RouteTable([route("api", host="api.example.com"), route("wild", host="*.games.test"),
                        route("all")])
    assert table.serves_host("api.example.com")
    assert table.serves_host("eu.games.test")
    assert not table.serves_host("games.test")
    assert not table.serves_host("evil.test")
