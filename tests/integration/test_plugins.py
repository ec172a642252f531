"""Plugins end to end (docs/plugins.md): the built-ins, a third-party plugin by dotted path, async
hooks, plugin failures, and what a player and an operator see of them."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Running, pool_yaml


async def rejected(lb: Running, http: aiohttp.ClientSession, reason: str) -> float:
    """balancer_rejected_requests_total for the public listener and `reason`."""
    async with http.get(lb.admin_url + "/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "balancer_rejected_requests_total"
                    and sample.labels == {"listener": "public", "reason": reason}):
                return sample.value
    return 0.0


def last_seen(backend) -> dict[str, str]:
    """The headers of the last request a backend received, by lower-case name."""
    return {name.lower(): value for name, value in backend.seen_headers[-1].items()}


def route_with(bs: list, plugins: str, extra: str = "") -> str:
    return f"""
        {extra}
        routes:
          - name: games
            pool: web
            plugins: {plugins}
        pools:
          web:
            backends: {pool_yaml(bs)}
        """


# -- rate_limit ---------------------------------------------------------------------------------


async def test_rate_limit_answers_429_with_retry_after_once_the_burst_is_spent(start_balancer, backends, http):
    bs = await backends(1)
    lb = await start_balancer(route_with(bs, "[{rate_limit: {rate: 1/m, burst: 3, key: client_ip}}]"))
    statuses = []
    for _ in range(3):
        async with http.get(lb.url + "/lobby") as resp:
            statuses.append(resp.status)
    async with http.get(lb.url + "/lobby") as resp:
        body = await resp.json()
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "60"  # one token per minute, whole seconds
        assert resp.headers["Content-Type"] == "application/json"
        assert body["error"] == "rate limited"
        assert body["request_id"] == resp.headers["X-Request-Id"]
    assert statuses == [200, 200, 200]
    assert bs[0].count() == 3  # the refused request never reached a backend
    assert await rejected(lb, http, "rate_limited") == 1


async def test_rate_limit_keyed_by_header_gives_each_player_a_bucket(start_balancer, backends, http):
    bs = await backends(1)
    lb = await start_balancer(route_with(bs, "[{rate_limit: {rate: 1/m, burst: 1, key: 'header:X-Player-Id'}}]"))

    async def status(player: str | None) -> int:
        headers = {"X-Player-Id": player} if player else {}
        async with http.get(lb.url + "/bet", headers=headers) as resp:
            return resp.status

    assert [await status("alice"), await status("alice"), await status("bob"), await status("bob")] == [
        200, 429, 200, 429]
    # No header: counted under the client address, so leaving it out does not escape the limit.
    assert [await status(None), await status(None)] == [200, 429]


async def test_rate_limit_keyed_by_cookie(start_balancer, backends, http):
    bs = await backends(1)
    lb = await start_balancer(route_with(bs, "[{rate_limit: {rate: 1/m, burst: 2, key: 'cookie:session'}}]"))
    answers = []
    for session in ("s1", "s1", "s1", "s2"):
        async with http.get(lb.url + "/", headers={"Cookie": f"theme=dark; session={session}"}) as resp:
            answers.append(resp.status)
    assert answers == [200, 200, 429, 200]


async def test_rate_limit_refills_over_time(start_balancer, backends, http):
    bs = await backends(1)
    lb = await start_balancer(route_with(bs, "[{rate_limit: {rate: 4/s, burst: 1}}]"))
    async with http.get(lb.url + "/") as first, http.get(lb.url + "/") as second:
        assert (first.status, second.status) == (200, 429)
        assert second.headers["Retry-After"] == "1"  # under a second, rounded up to whole seconds
    await asyncio.sleep(0.3)  # 4/s: a token back every 250 ms
    async with http.get(lb.url + "/") as again:
        assert again.status == 200


async def test_rate_limit_uses_the_address_a_trusted_proxy_forwarded_is_not_enough(
        start_balancer, backends, http):
    """X-Forwarded-For is a header anyone can write: the limit follows the connection's client."""
    bs = await backends(1)
    lb = await start_balancer(route_with(bs, "[{rate_limit: {rate: 1/m, burst: 1}}]"))
    async with http.get(lb.url + "/", headers={"X-Forwarded-For": "198.51.100.1"}) as a:
        assert a.status == 200
    async with http.get(lb.url + "/", headers={"X-Forwarded-For": "198.51.100.2"}) as b:
        assert b.status == 429


# -- geo_fence ------------------------------------------------------------------------------------

GEO = """
        trusted_proxies: [127.0.0.0/8]
        geo:
          country_header: CF-IPCountry
          regions: {eu-west: [DE, FR], na-east: [US]}
          default_region: eu-west
"""


async def test_geo_fence_refuses_the_listed_countries_on_its_route_only(start_balancer, backends, http):
    bs = await backends(1)
    lb = await start_balancer(f"""
        {GEO}
        routes:
          - {{name: poker, pool: web, match: {{path_prefix: /poker/}}, plugins: [{{geo_fence: {{countries: [US, fr]}}}}]}}
          - {{name: lobby, pool: web}}
        pools:
          web:
            backends: {pool_yaml(bs)}
        """)

    async def get(path: str, country: str) -> tuple[int, dict]:
        async with http.get(lb.url + path, headers={"CF-IPCountry": country}) as resp:
            return resp.status, await resp.json()

    status, body = await get("/poker/table", "US")
    assert status == 451
    assert body["error"] == "unavailable in your jurisdiction (US)"
    assert (await get("/poker/table", "FR"))[0] == 451
    assert (await get("/poker/table", "DE"))[0] == 200
    assert (await get("/lobby", "US"))[0] == 200  # the fence is on the poker route only
    assert bs[0].count(path="/poker/table") == 1
    assert await rejected(lb, http, "geo_blocked") == 2


# -- ip_filter --------------------------------------------------------------------------------------


async def test_ip_filter_allow_deny_and_deny_wins(start_balancer, backends, http):
    bs = await backends(1)
    lb = await start_balancer(f"""
        routes:
          - {{name: office, pool: web, match: {{path_prefix: /office/}}, plugins: [{{ip_filter: {{allow: [10.0.0.0/8]}}}}]}}
          - {{name: denied, pool: web, match: {{path_prefix: /denied/}},
              plugins: [{{ip_filter: {{allow: [127.0.0.0/8], deny: [127.0.0.1]}}}}]}}
          - {{name: admin, pool: web, match: {{path_prefix: /admin/}}, plugins: [{{ip_filter: {{allow: [127.0.0.0/8]}}}}]}}
          - {{name: open, pool: web, match: {{path_prefix: /open/}}, plugins: [{{ip_filter: {{deny: [192.0.2.0/24]}}}}]}}
        pools:
          web:
            backends: {pool_yaml(bs)}
        """)
    answers = {}
    for path in ("/office/x", "/denied/x", "/admin/x", "/open/x"):
        async with http.get(lb.url + path) as resp:
            answers[path] = resp.status
            if resp.status == 403:
                assert (await resp.json())["error"] == "forbidden"
    assert answers == {"/office/x": 403, "/denied/x": 403, "/admin/x": 200, "/open/x": 200}
    assert bs[0].count() == 2


# -- headers and request_id ---------------------------------------------------------------------------


async def test_headers_plugin_edits_request_and_response(start_balancer, backends, http):
    bs = await backends(1)
    lb = await start_balancer(route_with(bs, """
              - headers:
                  request:
                    remove: [X-Debug]
                    set: {X-Tenant: casino-eu, User-Agent: edge}
                    add: {X-Via: edge-1}
                  response:
                    remove: [Server]
                    set: {Strict-Transport-Security: max-age=31536000, X-Backend: hidden}
                    add: {X-Frame-Options: DENY, Set-Cookie: [a=1, b=2]}"""))
    async with http.get(lb.url + "/", headers={"X-Debug": "1", "X-Tenant": "forged", "User-Agent": "x"}) as resp:
        assert resp.status == 200
        assert "Server" not in resp.headers
        assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
        assert resp.headers.getall("X-Backend") == ["hidden"]
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2"]
    seen = last_seen(bs[0])
    assert "x-debug" not in seen
    assert seen["x-tenant"] == "casino-eu" and seen["user-agent"] == "edge" and seen["x-via"] == "edge-1"


async def test_headers_plugin_config_errors_carry_key_paths(start_balancer, backends, tmp_path):
    from balancer.config import ConfigError
    from balancer.config_file import load_config
    path = tmp_path / "bad.yaml"
    path.write_text("""
listeners: [{name: public, address: "127.0.0.1:0"}]
routes:
  - name: games
    pool: web
    plugins:
      - headers: {request: {set: {X-Forwarded-For: 1.2.3.4}, remov: [a]}, response: {remove: [Content-Length]}}
      - rate_limit: {rate: 20/h, burst: 0, key: 'ip'}
pools:
  web: {backends: [{id: a, address: "127.0.0.1:1"}]}
""")
    try:
        load_config(str(path))
    except ConfigError as exc:
        errors = dict(exc.errors)
    else:
        raise AssertionError("the config should have been refused")
    assert "cannot be edited by a plugin" in errors["routes.0.plugins.0.headers.request.set.X-Forwarded-For"]
    assert errors["routes.0.plugins.0.headers.request.remov"] == "unknown key"
    assert "cannot be edited" in errors["routes.0.plugins.0.headers.response.remove.0"]
    assert "'20/s' or '600/m'" in errors["routes.0.plugins.1.rate_limit.rate"]
    assert "at least 1" in errors["routes.0.plugins.1.rate_limit.burst"]
    assert "client_ip, header:NAME or cookie:NAME" in errors["routes.0.plugins.1.rate_limit.key"]


async def test_request_id_plugin_custom_header_and_hex_format(start_balancer, backends, http):
    bs = await backends(1)
    lb = await start_balancer(route_with(bs, "[{request_id: {header: X-Correlation-Id, format: hex}}]"))
    async with http.get(lb.url + "/") as resp:
        made = resp.headers["X-Correlation-Id"]
        assert re.fullmatch(r"[0-9a-f]{32}", made)
    seen = last_seen(bs[0])
    assert seen["x-correlation-id"] == made
    assert seen["x-request-id"] == made  # one id for the request, whatever header carries it
    async with http.get(lb.url + "/", headers={"X-Correlation-Id": "trace-42"}) as resp:
        assert resp.headers["X-Correlation-Id"] == "trace-42"
    assert last_seen(bs[0])["x-request-id"] == "trace-42"
    async with http.get(lb.url + "/", headers={"X-Correlation-Id": "bad id!"}) as resp:
        assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Correlation-Id"])


async def test_request_id_plugin_default_header_is_on_the_response(start_balancer, backends, http):
    bs = await backends(1)
    lb = await start_balancer(route_with(bs, "[{request_id: {}}, {rate_limit: {rate: 1/m, burst: 1}}]"))
    async with http.get(lb.url + "/") as resp:
        rid = resp.headers["X-Request-Id"]
        assert re.fullmatch(r"[0-9a-f-]{36}", rid)
    assert last_seen(bs[0])["x-request-id"] == rid
    async with http.get(lb.url + "/", headers={"X-Request-Id": "abc.123"}) as resp:
        assert resp.status == 429
        # The plugin ran first, so the rate limiter's answer quotes the same id.
        assert resp.headers["X-Request-Id"] == "abc.123"
        assert (await resp.json())["request_id"] == "abc.123"


# -- third-party plugins by dotted path ------------------------------------------------------------------


async def test_example_maintenance_plugin_by_dotted_path(start_balancer, backends, http, monkeypatch):
    monkeypatch.setenv("STAFF_TOKEN", "s3cret")
    bs = await backends(1)
    lb = await start_balancer(route_with(bs, """
              - tests.example_plugins.maintenance:Maintenance:
                  retry_after: 30m
                  bypass_header: X-Staff-Token
                  bypass_token_env: STAFF_TOKEN"""))
    async with http.get(lb.url + "/lobby") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1800"
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-store"
        assert "under maintenance" in await resp.text()
    async with http.get(lb.url + "/lobby", headers={"X-Staff-Token": "wrong"}) as resp:
        assert resp.status == 503
    async with http.get(lb.url + "/lobby", headers={"X-Staff-Token": "s3cret"}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Maintenance"] == "bypassed"
    assert bs[0].count() == 1


async def test_request_view_shows_what_the_balancer_decided(start_balancer, backends, http):
    bs = await backends(("eu-1", "eu-west"))
    lb = await start_balancer(f"""
        {GEO}
        routes:
          - name: games
            pool: web
            match: {{host: games.example.com}}
            plugins: [tests.example_plugins.probes:Describe: {{}}]
        pools:
          web:
            backends: {pool_yaml(bs)}
        """)
    async with http.get(lb.url + "/slots/spin?bet=1", headers={
            "Host": "games.example.com:8443", "CF-IPCountry": "de", "Cookie": "player=p-7"}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Seen-Status"] == "200"
        assert resp.headers["X-Backend-Was"] == "eu-1"
    assert last_seen(bs[0])["x-view"] == (
        "GET|/slots/spin|/slots/spin?bet=1|games.example.com|http|public|games|DE|eu-west|p-7|127.0.0.1")


async def test_async_plugin_runs_before_the_backend_and_keeps_pipelined_order(start_balancer, backends):
    bs = await backends(1)
    lb = await start_balancer(route_with(bs, "[tests.example_plugins.probes:SlowTagger: {delay: 0.02}]"))
    # Three pipelined requests: the first one waits in the plugin, the answers still come in order.
    raw = await lb.raw(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
                       b"GET /two HTTP/1.1\r\nHost: a\r\nX-Refuse: yes\r\n\r\n"
                       b"GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert raw.count(b"HTTP/1.1 ") == 3
    first, second, third = (raw.index(b'"/one"'), raw.index(b"refused after a lookup"), raw.index(b'"/three"'))
    assert first < second < third
    assert {k.lower(): v for k, v in bs[0].seen_headers[0].items()}["x-tagged"] == "GET /one 127.0.0.1"
    assert bs[0].count() == 2


async def test_a_failing_plugin_answers_500_and_the_connection_survives(start_balancer, backends, http, caplog):
    bs = await backends(1)
    lb = await start_balancer(f"""
        routes:
          - {{name: req, pool: web, match: {{path_prefix: /request}}, plugins: [tests.example_plugins.probes:Broken: {{fail: request}}]}}
          - {{name: ans, pool: web, match: {{path_prefix: /answer}}, plugins: [tests.example_plugins.probes:Broken: {{fail: answer}}]}}
          - {{name: resp, pool: web, match: {{path_prefix: /response}}, plugins: [tests.example_plugins.probes:Broken: {{fail: response}}]}}
          - {{name: smuggle, pool: web, match: {{path_prefix: /smuggle}}, plugins: [tests.example_plugins.probes:Broken: {{fail: smuggle}}]}}
          - {{name: inject, pool: web, match: {{path_prefix: /inject}}, plugins: [tests.example_plugins.probes:Broken: {{fail: inject}}]}}
          - {{name: ok, pool: web}}
        pools:
          web:
            backends: {pool_yaml(bs)}
        """)
    for path in ("/request", "/answer", "/response", "/smuggle", "/inject"):
        async with http.get(lb.url + path) as resp:
            assert resp.status == 500, path
            assert (await resp.json())["error"] == "plugin failed"
    assert bs[0].count(path="/response") == 1  # it reached the backend; its answer was dropped
    assert bs[0].count() == 1
    async with http.get(lb.url + "/fine") as resp:  # same keep-alive connection pool, still served
        assert resp.status == 200
    assert "plugin tests.example_plugins.probes:Broken failed in on_request" in caplog.text
    assert "failed in on_response" in caplog.text


async def test_plugin_answer_status_and_headers_are_checked(start_balancer, backends, http):
    bs = await backends(1)
    lb = await start_balancer(f"""
        routes:
          - name: custom
            pool: web
            match: {{path_prefix: /custom}}
            plugins: [tests.example_plugins.probes:Teapot: {{status: 402, message: pay first, headers: {{X-Why: wallet, Content-Length: '999'}}}}]
          - name: bad
            pool: web
            plugins: [tests.example_plugins.probes:Teapot: {{status: 700}}]
        pools:
          web:
            backends: {pool_yaml(bs)}
        """)
    raw = await lb.raw(b"GET /custom HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 402 ")
    assert b"x-why: wallet" in head.lower()
    assert head.lower().count(b"content-length") == 1  # the plugin cannot set the framing
    assert json.loads(body)["error"] == "pay first"
    raw = await lb.raw(b"HEAD /custom HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 402 ") and raw.endswith(b"\r\n\r\n")  # HEAD: no body
    async with http.get(lb.url + "/other") as resp:
        assert resp.status == 500
    assert bs[0].count() == 0


async def test_a_route_without_plugins_has_no_plugin_state(start_balancer, backends):
    bs = await backends(1)
    lb = await start_balancer(f"""
        routes:
          - {{name: plain, pool: web, match: {{path_prefix: /plain}}}}
          - {{name: with, pool: web, plugins: [{{headers: {{response: {{set: {{X-A: b}}}}}}}}]}}
        pools:
          web:
            backends: {pool_yaml(bs)}
        """)
    plain, with_plugins = lb.app.runtime.routes.routes
    assert plain.plugins == ()  # the data plane's whole cost for it: one truth test
    assert with_plugins.plugins.request_hooks == ()  # a response-only plugin is not called on requests
    assert len(with_plugins.plugins.response_hooks) == 1
