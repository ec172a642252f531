"""The plugin protocol without sockets: the request/response views, plugin answers, the hook
chain, and the built-ins' logic (token buckets on a fake clock, address filters, settings)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from balancer.http.parser import RequestHead
from balancer.plugins import (
    PluginChain,
    PluginRequest,
    PluginResponse,
    Response,
    build_plugins,
    parse_plugin,
    prepare_field,
    render_answer,
)
from plugins.headers import HeaderEdits
from plugins.ip_filter import IpFilter
from plugins.rate_limit import RateLimit, parse_rate


def request_for(headers: list[tuple[str, str]] = (), client_ip: str = "203.0.113.9",
                method: bytes = b"GET", target: bytes = b"/lobby?x=1") -> PluginRequest:
    head = RequestHead()
    head.method = method
    head.target = target
    head.path = target.split(b"?")[0]
    head.host = "games.example.com"
    for name, value in headers:
        head.headers.append((name.lower().encode(), name.encode(), value.encode()))
        if name.lower() == "cookie":
            head.cookie = value.encode() if head.cookie is None else head.cookie + b"; " + value.encode()
    client = SimpleNamespace(client_ip=client_ip, scheme=b"https", listener=SimpleNamespace(name="public"))
    exchange = SimpleNamespace(head=head, client=client, route=SimpleNamespace(name="games"),
                               country="DE", region="eu-west", request_id="rid-1")
    return PluginRequest(exchange)  # type: ignore[arg-type]


def configured(name: str, raw: object):
    errors: list[tuple[str, str]] = []
    config = parse_plugin(name, raw, "routes.0.plugins.0", errors)
    assert errors == [] and config is not None
    (plugin,) = build_plugins(SimpleNamespace(config=SimpleNamespace(plugins=(config,))))
    return plugin


def errors_of(name: str, raw: object) -> dict[str, str]:
    errors: list[tuple[str, str]] = []
    assert parse_plugin(name, raw, "routes.0.plugins.0", errors) is None
    return dict(errors)


# -- the request view ---------------------------------------------------------------------------


def test_request_view_reads_the_request():
    request = request_for([("Cookie", "a=1; player=p-7"), ("X-Player-Id", "42")])
    assert (request.method, request.path, request.target, request.host) == ("GET", "/lobby", "/lobby?x=1",
                                                                          "games.example.com")
    assert (request.scheme, request.listener, request.route) == ("https", "public", "games")
    assert (request.country, request.region, request.client_ip) == ("DE", "eu-west", "203.0.113.9")
    assert request.cookie("player") == "p-7" and request.cookie("nope") is None
    assert request.headers.get("x-player-id") == "42" and "X-PLAYER-ID" in request.headers


def test_header_edits_change_the_fields_sent_upstream_in_place():
    request = request_for([("X-A", "1"), ("X-B", "2"), ("x-a", "3")])
    fields = request._exchange.head.headers
    request.headers.set("X-A", "new")  # replaces both, where the first one was
    assert [(n, v) for _, n, v in fields] == [(b"X-A", b"new"), (b"X-B", b"2")]
    request.headers.add("X-A", "more")
    assert request.headers.get_all("x-a") == ["new", "more"]
    request.headers.remove("x-a")
    request.headers.remove("absent")
    assert request.headers.items() == [("X-B", "2")]


def test_cookie_edits_keep_the_joined_cookie_in_step():
    request = request_for([("Cookie", "LB=abc")])
    request.headers.add("Cookie", "player=9")
    assert request.cookie("LB") == "abc" and request.cookie("player") == "9"
    request.headers.remove("Cookie")
    assert request.cookie("LB") is None


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "Host", "Connection",
                                  "X-Forwarded-For", "X-Request-Id", "Upgrade"])
def test_protected_request_headers_cannot_be_edited(name):
    request = request_for([("Host", "a")])
    for edit in (lambda: request.headers.set(name, "1"), lambda: request.headers.add(name, "1"),
                 lambda: request.headers.remove(name)):
        with pytest.raises(ValueError, match="cannot be edited by a plugin"):
            edit()
    assert request.headers.get("host") == "a"


@pytest.mark.parametrize("name,value", [("X-A", "a\r\nX-Admin: 1"), ("X-A", "a\nb"), ("X-A", "nul\x00"),
                                        ("Bad Name", "v"), ("X:A", "v"), ("", "v")])
def test_header_injection_is_refused(name, value):
    with pytest.raises(ValueError, match="invalid"):
        request_for().headers.set(name, value)


def test_prepared_fields_edit_like_names_and_values():
    request = request_for([("X-A", "1"), ("X-B", "2"), ("x-a", "3"), ("Cookie", "LB=abc")])
    fields = request._exchange.head.headers
    request.headers.set_prepared(prepare_field("X-A", "new"))
    assert [(n, v) for _, n, v in fields][:2] == [(b"X-A", b"new"), (b"X-B", b"2")]
    request.headers.set_prepared(prepare_field("X-C", " padded "))  # absent: appended, trimmed
    request.headers.add_prepared(prepare_field("X-A", "more"))
    assert request.headers.get_all("x-a") == ["new", "more"] and request.headers.get("x-c") == "padded"
    request.headers.remove_prepared(prepare_field("x-a"))
    request.headers.remove_prepared(prepare_field("Cookie"))  # derived state follows, as with remove()
    assert request.headers.items() == [("X-B", "2"), ("X-C", "padded")]
    assert request.cookie("LB") is None


def test_prepared_fields_are_checked_once_and_protected_ones_still_refused():
    for name, value in (("X-A", "a\r\nX-Admin: 1"), ("Bad Name", "v"), ("X-A", "nul\x00")):
        with pytest.raises(ValueError, match="invalid"):
            prepare_field(name, value)
    request = request_for([("Host", "a")])
    host = prepare_field("Host", "evil")
    for edit in (request.headers.set_prepared, request.headers.add_prepared, request.headers.remove_prepared):
        with pytest.raises(ValueError, match="Host cannot be edited by a plugin"):
            edit(host)
    assert request.headers.items() == [("Host", "a")]
    # Content-Length may not be edited on a response either.
    with pytest.raises(ValueError, match="cannot be edited"):
        PluginResponse(200, []).headers.set_prepared(prepare_field("Content-Length", "9"))


def test_request_id_must_be_well_formed():
    request = request_for()
    request.request_id = "trace.42-a_b"
    assert request._exchange.request_id == "trace.42-a_b"
    for bad in ("", "a b", "x" * 129, "é"):
        with pytest.raises(ValueError):
            request.request_id = bad


def test_response_view_status_is_read_only_headers_are_not():
    fields = [(b"content-length", b"Content-Length", b"2"), (b"server", b"Server", b"aiohttp")]
    response = PluginResponse(200, fields)
    response.headers.remove("Server")
    response.headers.set("X-Frame-Options", "DENY")
    assert [n for _, n, _ in fields] == [b"Content-Length", b"X-Frame-Options"]
    with pytest.raises(ValueError):
        response.headers.set("Content-Length", "99")
    with pytest.raises(AttributeError):
        response.status = 500  # type: ignore[misc]


# -- plugin answers ------------------------------------------------------------------------------


def split(data: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


def test_answer_without_body_is_the_balancers_json_error():
    lines, body = split(render_answer(Response(429, retry_after=3), "rid-1", close=False, head_only=False))
    assert lines[0] == b"HTTP/1.1 429 Too Many Requests"
    assert b"retry-after: 3" in lines and b"content-type: application/json" in lines
    assert json.loads(body) == {"error": "too many requests", "request_id": "rid-1"}
    assert b"content-length: %d" % len(body) in lines


def test_answer_with_body_is_framed_by_the_balancer():
    answer = Response(503, body=b"<h1>back soon</h1>", headers=[("Content-Type", "text/html"),
                                                               ("Content-Length", "1"),
                                                               ("Transfer-Encoding", "chunked"),
                                                               ("X-Request-Id", "forged")])
    lines, body = split(render_answer(answer, "rid-2", close=True, head_only=False))
    assert body == b"<h1>back soon</h1>"
    assert lines[1:] == [b"Content-Type: text/html", b"content-length: 18", b"x-request-id: rid-2",
                         b"connection: close"]


def test_answer_to_head_has_no_body():
    data = render_answer(Response(403, "forbidden"), "rid", close=False, head_only=True)
    assert data.endswith(b"\r\n\r\n") and b"content-length: " in data and b"forbidden" not in data


@pytest.mark.parametrize("answer", [Response(99), Response(600), Response(True),  # type: ignore[arg-type]
                                    Response(403, headers={"X-A": "a\r\nb"}), Response(200, body="text")])  # type: ignore[arg-type]
def test_invalid_answers_are_refused(answer):
    with pytest.raises(ValueError):
        render_answer(answer, "rid", close=False, head_only=False)


# -- the chain ---------------------------------------------------------------------------------


def test_chain_lists_only_the_hooks_a_plugin_defines():
    response_only = configured("headers", {"response": {"set": {"X-A": "b"}}})
    both = configured("request_id", {"format": "hex"})
    chain = PluginChain(["headers", "request_id"], [response_only, both])
    assert list(chain) == [response_only, both]
    assert [name for name, _ in chain.request_hooks] == ["request_id"]
    assert [name for name, _ in chain.response_hooks] == ["headers", "request_id"]
    # X-Request-Id as UUID4 is what the balancer does anyway: only the response hook is left.
    assert configured("request_id", {}).on_request is None
    assert build_plugins(SimpleNamespace(config=SimpleNamespace(plugins=()))) == ()


# -- rate_limit -----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(raw: dict) -> tuple[RateLimit, Clock]:
    plugin = configured("rate_limit", raw)
    clock = Clock()
    plugin.clock = clock
    return plugin, clock


@pytest.mark.parametrize("text,per_second", [("20/s", 20.0), ("600/m", 10.0), ("1/m", 1 / 60), ("2.5/s", 2.5),
                                             (" 5 / s ", 5.0), ("0/s", None), ("5/h", None), ("5", None),
                                             ("fast", None), (20, None)])
def test_parse_rate(text, per_second):
    assert parse_rate(text) == (pytest.approx(per_second) if per_second else None)


def test_token_bucket_burst_refill_and_retry_after():
    plugin, clock = limiter({"rate": "1/m", "burst": 2})
    request = request_for()
    assert plugin.on_request(request) is None
    assert plugin.on_request(request) is None
    answer = plugin.on_request(request)
    assert answer == Response(429, "rate limited", retry_after=60)
    clock.now += 45  # three quarters of a token back
    assert plugin.on_request(request).retry_after == 15
    clock.now += 15
    assert plugin.on_request(request) is None
    clock.now += 10 * 60  # long idle: never more than the burst
    assert [plugin.on_request(request) is None for _ in range(3)] == [True, True, False]


def test_retry_after_is_whole_seconds_and_at_least_one():
    plugin, clock = limiter({"rate": "20/s", "burst": 1})
    request = request_for()
    plugin.on_request(request)
    assert plugin.on_request(request).retry_after == 1


def test_default_burst_is_one_seconds_worth():
    assert configured("rate_limit", {"rate": "20/s"}).burst == 20
    assert configured("rate_limit", {"rate": "30/m"}).burst == 1


def test_buckets_that_are_full_again_are_forgotten():
    plugin, clock = limiter({"rate": "1/s", "burst": 5})  # full again 5 s after the last request
    for n in range(100):
        plugin.on_request(request_for(client_ip=f"10.0.0.{n}"))
    assert len(plugin.buckets) == 100
    clock.now += 5.01
    plugin.on_request(request_for(client_ip="10.9.9.9"))
    assert list(plugin.buckets) == ["10.9.9.9"]


def test_bucket_count_is_capped_least_recently_used_first():
    plugin, clock = limiter({"rate": "1/m", "burst": 1, "max_keys": 3})
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        plugin.on_request(request_for(client_ip=ip))
        clock.now += 1
    plugin.on_request(request_for(client_ip="10.0.0.1"))  # 10.0.0.1 is now the most recent
    plugin.on_request(request_for(client_ip="10.0.0.4"))
    assert list(plugin.buckets) == ["10.0.0.3", "10.0.0.1", "10.0.0.4"]
    # A remembered client stays limited.
    assert plugin.on_request(request_for(client_ip="10.0.0.1")).status == 429


def test_long_key_values_are_hashed_but_still_distinct():
    plugin, _ = limiter({"rate": "1/m", "burst": 1, "key": "header:X-Player-Id"})
    long_a, long_b = "a" * 4000, "a" * 3999 + "b"
    assert plugin.on_request(request_for([("X-Player-Id", long_a)])) is None
    assert plugin.on_request(request_for([("X-Player-Id", long_b)])) is None
    assert plugin.on_request(request_for([("X-Player-Id", long_a)])).status == 429
    assert max(len(key) for key in plugin.buckets) < 40


def test_rate_limit_settings_errors():
    errors = errors_of("rate_limit", {"rate": "20/h", "burst": True, "key": "header:", "brust": 1})
    at = "routes.0.plugins.0.rate_limit"
    assert set(errors) == {f"{at}.rate", f"{at}.burst", f"{at}.key", f"{at}.brust"}
    assert errors[f"{at}.brust"] == "unknown key"
    assert errors_of("rate_limit", {})[f"{at}.rate"] == "required key is missing"
    assert "cookie name" in errors_of("rate_limit", {"rate": "1/s", "key": "cookie:a b"})[f"{at}.key"]
    assert errors_of("rate_limit", "20/s") == {at: "expected a mapping of settings, got '20/s'"}


# -- ip_filter, geo_fence, headers, request_id --------------------------------------------------------


@pytest.mark.parametrize("ip,allowed", [("10.1.2.3", True), ("10.6.6.6", False), ("192.0.2.1", False),
                                        ("::ffff:10.1.2.3", True), ("2001:db8::1", True),
                                        ("2001:db8:bad::1", False), ("not-an-ip", False)])
def test_ip_filter_decisions(ip, allowed):
    plugin = configured("ip_filter", {"allow": ["10.0.0.0/8", "2001:db8::/32"],
                                      "deny": ["10.6.6.0/24", "2001:db8:bad::/48"]})
    answer = plugin.on_request(request_for(client_ip=ip))
    assert (answer is None) is allowed
    if answer is not None:
        assert answer.status == 403


def test_ip_filter_deny_only_lets_the_rest_through():
    plugin: IpFilter = configured("ip_filter", {"deny": ["192.0.2.0/24"]})
    assert plugin.on_request(request_for(client_ip="198.51.100.1")) is None
    assert plugin.on_request(request_for(client_ip="192.0.2.7")).status == 403


def test_ip_filter_settings_errors():
    at = "routes.0.plugins.0.ip_filter"
    errors = errors_of("ip_filter", {"allow": ["10.0.0.1/8", "nope"], "deny": "10.0.0.0/8"})
    assert errors == {f"{at}.allow.0": "10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?",
                      f"{at}.allow.1": "expected an IP address or CIDR network, got 'nope'",
                      f"{at}.deny": "expected a list, got '10.0.0.0/8'"}
    assert errors_of("ip_filter", {"allow": []}) == {at: "give allow or deny networks (or both)"}


def test_geo_fence_uses_the_decided_country_and_lets_unknown_through():
    plugin = configured("geo_fence", {"countries": ["us", "DE"]})
    assert plugin.on_request(request_for()).status == 451  # the view's country is DE
    request = request_for()
    request._exchange.country = None
    assert plugin.on_request(request) is None
    at = "routes.0.plugins.0.geo_fence"
    assert errors_of("geo_fence", {"countries": []}) == {f"{at}.countries": "list at least one country"}
    assert f"{at}.countries.1" in errors_of("geo_fence", {"countries": ["US", "USA"]})


def test_headers_plugin_order_remove_set_add():
    plugin: HeaderEdits = configured("headers", {"request": {
        "remove": ["X-A"], "set": {"X-A": "set", "X-Num": 5}, "add": {"X-A": ["add1", "add2"]}}})
    assert plugin.on_response is None  # nothing configured for responses: no hook at all
    request = request_for([("X-A", "client")])
    plugin.on_request(request)
    assert request.headers.get_all("X-A") == ["set", "add1", "add2"]
    assert request.headers.get("X-Num") == "5"


def test_request_id_settings():
    at = "routes.0.plugins.0.request_id"
    assert errors_of("request_id", {"header": "X-Forwarded-For"})[f"{at}.header"].startswith(
        "X-Forwarded-For cannot be edited")
    assert errors_of("request_id", {"format": "ulid"}) == {f"{at}.format": "expected one of uuid4, hex; got 'ulid'"}
    plugin = configured("request_id", {"header": "X-Trace", "format": "hex"})
    request = request_for([("X-Trace", "a" * 129)])  # too long: replaced
    plugin.on_request(request)
    assert len(request.request_id) == 32 and request.headers.get("X-Trace") == request.request_id
