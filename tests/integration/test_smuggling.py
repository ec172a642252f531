"""Request smuggling and malformed input, over raw sockets, against the real balancer.

Every vector is sent on a fresh connection with a second request (`GET /smuggled`) glued to it,
the way an attacker hides a request inside another one's framing. Each must be refused with a
fitting 4xx (or 501), the connection must close, and the backend must never see the second
request: a desync between the balancer and the backend would show up as `/smuggled` in the
backend's counters. docs/security.md; RFC 9112 §6.3 and §11.2.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import pool_yaml
from tests.httpcheck import Raw, parse_responses, send_raw

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a.example\r\n\r\n"
LIMITS = "{max_url_bytes: 1024, max_header_bytes: 4096, max_header_count: 20, max_body_bytes: 100000}"


def post(headers: bytes, body: bytes = b"", line: bytes = b"POST /upload HTTP/1.1") -> bytes:
    """A request with Host, the given header lines (CRLF-terminated), then `body`."""
    return line + b"\r\nHost: a.example\r\n" + headers + b"\r\n" + body


CHUNKED_SMUGGLE = b"0\r\n\r\n" + SMUGGLED  # a chunked reader sees the end, a CL reader sees more

VECTORS = [
    # -- body framing ----------------------------------------------------------------------
    pytest.param(post(b"Content-Length: 48\r\nTransfer-Encoding: chunked\r\n", CHUNKED_SMUGGLE),
                 400, id="cl-then-te"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\nContent-Length: 48\r\n", CHUNKED_SMUGGLE),
                 400, id="te-then-cl"),
    pytest.param(post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello" + SMUGGLED),
                 400, id="two-cl-equal"),
    pytest.param(post(b"Content-Length: 5\r\nContent-Length: 0\r\n", b"hello" + SMUGGLED),
                 400, id="two-cl-different"),
    pytest.param(post(b"Content-Length: 5, 5\r\n", b"hello" + SMUGGLED), 400, id="cl-list"),
    pytest.param(post(b"Content-Length: +5\r\n", b"hello" + SMUGGLED), 400, id="cl-plus-sign"),
    pytest.param(post(b"Content-Length: -5\r\n", b"hello" + SMUGGLED), 400, id="cl-minus-sign"),
    pytest.param(post(b"Content-Length: 0 5\r\n", b"hello" + SMUGGLED), 400, id="cl-inner-space"),
    pytest.param(post(b"Content-Length: 0x5\r\n", b"hello" + SMUGGLED), 400, id="cl-hex"),
    pytest.param(post(b"Content-Length: 5.0\r\n", b"hello" + SMUGGLED), 400, id="cl-decimal-point"),
    pytest.param(post(b"Content-Length: 18446744073709551621\r\n", b"hello" + SMUGGLED),
                 400, id="cl-overflow-u64"),
    pytest.param(post(b"Content-Length: 1000000000000000000000000000005\r\n", b"hello" + SMUGGLED),
                 400, id="cl-overflow-huge"),
    pytest.param(post(b"Content-Length: 100000000000000000\r\n", b"hello" + SMUGGLED),
                 413, id="cl-over-max-body"),
    pytest.param(post(b"Content-Length:\r\n", b"hello" + SMUGGLED), 400, id="cl-empty"),
    pytest.param(post(b"Transfer-Encoding: xchunked\r\n", CHUNKED_SMUGGLE), 501, id="te-xchunked"),
    pytest.param(post(b"Transfer-Encoding: chunked, identity\r\n", CHUNKED_SMUGGLE),
                 400, id="te-chunked-identity"),
    pytest.param(post(b"Transfer-Encoding: chunked, gzip\r\n", CHUNKED_SMUGGLE),
                 400, id="te-chunked-not-last"),
    pytest.param(post(b"Transfer-Encoding: gzip, chunked\r\n", CHUNKED_SMUGGLE),
                 501, id="te-unknown-coding-before-chunked"),
    pytest.param(post(b"Transfer-Encoding: identity\r\n", CHUNKED_SMUGGLE), 501, id="te-identity"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", CHUNKED_SMUGGLE),
                 400, id="te-twice"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", CHUNKED_SMUGGLE, line=b"POST /upload HTTP/1.0"),
                 400, id="te-on-http10"),
    pytest.param(post(b"Transfer_Encoding: chunked\r\n", CHUNKED_SMUGGLE), 400, id="te-underscore-name"),
    pytest.param(post(b"Content_Length: 48\r\n", CHUNKED_SMUGGLE), 400, id="cl-underscore-name"),
    pytest.param(post(b"Transfer-Encoding: \x0bchunked\r\n", CHUNKED_SMUGGLE), 400, id="te-vertical-tab"),
    pytest.param(post(b"Transfer-Encoding:\r\n chunked\r\n", CHUNKED_SMUGGLE), 400, id="te-obs-fold"),
    # -- header syntax ---------------------------------------------------------------------
    pytest.param(post(b"X-Game: a\r\n b\r\n") + SMUGGLED, 400, id="obs-fold-space"),
    pytest.param(post(b"X-Game: a\r\n\tb\r\n") + SMUGGLED, 400, id="obs-fold-tab"),
    pytest.param(post(b"Content-Length : 5\r\n", b"hello" + SMUGGLED), 400, id="space-before-colon"),
    pytest.param(post(b"Content-Length\t: 5\r\n", b"hello" + SMUGGLED), 400, id="tab-before-colon"),
    pytest.param(post(b" X-Game: a\r\n") + SMUGGLED, 400, id="space-before-name"),
    pytest.param(post(b": a\r\n") + SMUGGLED, 400, id="empty-name"),
    pytest.param(post(b"X-Game: a\x00b\r\n") + SMUGGLED, 400, id="nul-in-value"),
    pytest.param(post(b"X-Ga\x00me: a\r\n") + SMUGGLED, 400, id="nul-in-name"),
    pytest.param(post(b"X-Game: a\rb\r\n") + SMUGGLED, 400, id="cr-in-value"),
    pytest.param(post(b"X-Game: a\nContent-Length: 5\r\n", b"hello" + SMUGGLED), 400, id="lf-in-value"),
    pytest.param(post(b"X-Game: a\x01b\r\n") + SMUGGLED, 400, id="control-char-in-value"),
    pytest.param(post(b"X-Game: a\x7fb\r\n") + SMUGGLED, 400, id="del-in-value"),
    pytest.param(post(b"X-Ga\x01me: a\r\n") + SMUGGLED, 400, id="control-char-in-name"),
    pytest.param(post(b"X-G\xe4me: a\r\n") + SMUGGLED, 400, id="non-ascii-name"),
    pytest.param(b"GET / HTTP/1.1\nHost: a.example\n\n" + SMUGGLED, 400, id="bare-lf-everywhere"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a.example\nX-Game: a\r\n\r\n" + SMUGGLED,
                 400, id="bare-lf-after-header"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a.example\r\n\n" + SMUGGLED, 400, id="bare-lf-ends-head"),
    pytest.param(b"GET / HTTP/1.1\rHost: a.example\r\r" + SMUGGLED, 400, id="bare-cr-everywhere"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a.example\r\r\n" + SMUGGLED, 400, id="bare-cr-ends-head"),
    # -- chunks ----------------------------------------------------------------------------
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
                 400, id="chunk-size-not-hex"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"+5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
                 400, id="chunk-size-sign"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
                 400, id="chunk-size-0x"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"5 \r\nhello\r\n0\r\n\r\n" + SMUGGLED),
                 400, id="chunk-size-trailing-space"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
                 400, id="chunk-size-empty"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n",
                      b"10000000000000005\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
                 400, id="chunk-size-overflow"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n",
                      b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
                 400, id="chunk-size-overflow-ff"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"5;ext=1\nhello\r\n0\r\n\r\n" + SMUGGLED),
                 400, id="chunk-ext-bare-lf"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"5\nhello\n0\n\n" + SMUGGLED),
                 400, id="chunk-lines-bare-lf"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX0\r\n\r\n" + SMUGGLED),
                 400, id="chunk-data-longer-than-size"),
    pytest.param(post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\nContent-Length: 45\r\n\r\n"
                      + SMUGGLED), 400, id="content-length-in-trailer"),
    # -- request line and Host -------------------------------------------------------------
    pytest.param(b"GET / HTTP/1.1\r\n\r\n" + SMUGGLED, 400, id="host-missing"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n" + SMUGGLED,
                 400, id="host-repeated"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n\r\n" + SMUGGLED,
                 400, id="host-repeated-same"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a.example b.example\r\n\r\n" + SMUGGLED, 400, id="host-two-names"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n" + SMUGGLED, 400, id="host-userinfo"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: \r\n\r\n" + SMUGGLED, 400, id="host-empty"),
    pytest.param(b"GET http://evil.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n" + SMUGGLED,
                 400, id="absolute-form-foreign-host"),
    pytest.param(b"GET http://games.example.com@evil.example/ HTTP/1.1\r\nHost: games.example.com\r\n\r\n"
                 + SMUGGLED, 400, id="absolute-form-userinfo"),
    pytest.param(b"GET http:///x HTTP/1.1\r\nHost: games.example.com\r\n\r\n" + SMUGGLED,
                 400, id="absolute-form-empty-authority"),
    pytest.param(b"G(T / HTTP/1.1\r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="method-bad-token"),
    pytest.param(b"FOO / HTTP/1.1\r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="method-unknown"),
    pytest.param(b"get / HTTP/1.1\r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="method-lower-case"),
    pytest.param(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n" + SMUGGLED,
                 501, id="method-connect"),
    pytest.param(b"TRACE / HTTP/1.1\r\nHost: a.example\r\n\r\n" + SMUGGLED, 501, id="method-trace"),
    pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="asterisk-form"),
    pytest.param(b"GET /\r\n\r\n" + SMUGGLED, 400, id="http-0.9-no-version"),
    pytest.param(b"GET / HTTP/0.9\r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="http-0.9"),
    pytest.param(b"GET / HTTP/2.0\r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="http-2.0"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SMUGGLED, 400, id="http2-preface"),
    pytest.param(b"GET / HTTP/1.2\r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="http-1.2"),
    # llhttp also reads RTSP and ICE request lines (and reports just their version): only
    # HTTP/1.0 and HTTP/1.1 are served.
    pytest.param(b"GET / RTSP/1.0\r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="rtsp-1.0"),
    pytest.param(b"GET / RTSP/1.1\r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="rtsp-1.1"),
    pytest.param(b"OPTIONS / RTSP/1.0\r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="rtsp-options"),
    pytest.param(b"DESCRIBE /game RTSP/1.0\r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="rtsp-describe"),
    pytest.param(b"GET / ICE/1.0\r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="ice-1.0"),
    pytest.param(b"SOURCE /mount ICE/1.0\r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="ice-source"),
    pytest.param(b"GET / HTTPS/1.1\r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="https-token"),
    pytest.param(b"GET / http/1.1\r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="lower-case-http"),
    pytest.param(b"GET / HTTP/3\r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="http-3"),
    pytest.param(b"GET / HTTP/1.1 \r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="space-after-version"),
    pytest.param(b"GET /a\x01b HTTP/1.1\r\nHost: a.example\r\n\r\n" + SMUGGLED, 400, id="control-char-in-target"),
    # -- limits and upgrades ---------------------------------------------------------------
    pytest.param(b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: a.example\r\n\r\n" + SMUGGLED,
                 414, id="target-too-long"),
    pytest.param(post(b"X-Game: " + b"a" * 5000 + b"\r\n") + SMUGGLED, 431, id="header-too-large"),
    pytest.param(post(b"".join(b"X-Game-%d: a\r\n" % i for i in range(30))) + SMUGGLED,
                 431, id="too-many-headers"),
    pytest.param(post(b"".join(b"X-Game-%d: %s\r\n" % (i, b"a" * 300) for i in range(15))) + SMUGGLED,
                 431, id="headers-too-large-together"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                 b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n" + SMUGGLED,
                 400, id="h2c-upgrade"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\n\r\n"
                 + SMUGGLED, 400, id="h2c-upgrade-listed-first"),
    pytest.param(b"GET /ws/ HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                 b"Content-Length: 45\r\n\r\n" + SMUGGLED, 400, id="websocket-upgrade-with-body"),
]


@pytest.fixture
async def edge(start_balancer, backends):
    """The balancer with a catch-all route, a route for games.example.com, and small limits."""
    (backend,) = await backends(1)
    lb = await start_balancer(f"""
        routes:
          - {{name: games, match: {{host: games.example.com}}, pool: web}}
          - {{name: all, pool: web}}
        pools:
          web:
            backends: {pool_yaml([backend])}
        limits: {LIMITS}
        """)
    return lb, backend


async def settle() -> None:
    """Give a smuggled request that did get through the time to reach the backend (loopback:
    far less than this)."""
    await asyncio.sleep(0.02)


def assert_refused(raw: Raw, status: int) -> None:
    answers = parse_responses(raw.data)
    assert [a.status for a in answers] == [status], raw.data[:300]
    assert answers[0].closes, answers[0].headers
    assert answers[0].headers["content-type"] == "application/json"
    assert raw.closed, "the balancer must close the connection after refusing"


@pytest.mark.parametrize(("request_bytes", "status"), VECTORS)
async def test_vector_is_refused_and_nothing_is_smuggled(edge, request_bytes, status):
    lb, backend = edge
    raw = await send_raw(lb.port(), request_bytes)
    assert_refused(raw, status)
    await settle()
    assert backend.count(path="/smuggled") == 0
    # A refused head never reaches the backend at all.
    assert backend.count() == 0


BODY_VECTORS = [
    # The head is fine and goes to the backend; the body turns out bad half-way.
    pytest.param(b"5\r\nhello\r\nzz\r\n", 400, id="bad-second-chunk-size"),
    pytest.param(b"5\r\nhello\r\n5;x\nworld\r\n0\r\n\r\n", 400, id="bad-second-chunk-ext"),
    pytest.param(b"5\r\nhello\r\n" + b"186a0\r\n" + b"a" * 100000 + b"\r\n0\r\n\r\n", 413,
                 id="chunked-body-over-max"),
]


@pytest.mark.parametrize(("body", "status"), BODY_VECTORS)
async def test_bad_chunked_body_aborts_the_backend_request(edge, body, status):
    lb, backend = edge
    head = b"POST /upload HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw = await send_raw(lb.port(), [head, body + b"0\r\n\r\n" + SMUGGLED], pause=0.05)
    assert_refused(raw, status)
    await settle()
    assert backend.count(path="/smuggled") == 0
    assert backend.count(path="/upload") <= 1
    assert b"".join(backend.bodies) == b""  # the backend never got a complete body


async def test_absolute_form_for_a_route_host_is_served(edge):
    """No open proxy, but a client may name one of our own hosts in absolute form."""
    lb, backend = edge
    raw = await send_raw(lb.port(), b"GET http://games.example.com/lobby?x=1 HTTP/1.1\r\n"
                                    b"Host: other.example\r\nConnection: close\r\n\r\n")
    (answer,) = parse_responses(raw.data)
    assert answer.status == 200
    assert answer.headers["x-backend"] == backend.name
    assert backend.count("GET", "/lobby") == 1
    # The authority of the target replaces Host (RFC 9112 §3.2.2).
    assert backend.seen_headers[-1]["Host"] == "games.example.com"


async def test_legit_pipelining_after_a_body_still_works(edge):
    lb, backend = edge
    raw = await send_raw(lb.port(), post(b"Content-Length: 5\r\n", b"hello")
                         + b"GET /second HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
    answers = parse_responses(raw.data)
    assert [a.status for a in answers] == [200, 200]
    assert raw.closed
    assert backend.count("POST", "/upload") == 1
    assert backend.count("GET", "/second") == 1
    assert backend.bodies[0] == b"hello"


async def test_a_refused_pipelined_head_request_gets_a_head_without_body(edge):
    """A HEAD refused behind requests still being answered: its 400 comes after theirs, and,
    answering a HEAD, has no body (which the client would read as the next response)."""
    lb, _ = edge
    raw = await send_raw(lb.port(), b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n" * 2
                         + b"HEAD / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"0\r\nContent-Length: 5\r\n\r\n")
    answers = parse_responses(raw.data, head_requests=[False, False, True])
    assert [a.status for a in answers] == [200, 200, 400]
    assert raw.data.endswith(b"\r\n\r\n")  # the 400's head ends the stream: no body
    assert raw.closed


async def test_request_inside_a_body_is_only_body_bytes(edge):
    lb, backend = edge
    raw = await send_raw(lb.port(), post(b"Content-Length: %d\r\nConnection: close\r\n" % len(SMUGGLED),
                                         SMUGGLED))
    (answer,) = parse_responses(raw.data)
    assert answer.status == 200
    await settle()
    assert backend.count() == 1
    assert backend.count(path="/smuggled") == 0
    assert backend.bodies == [SMUGGLED]


async def test_chunked_request_inside_a_body_is_only_body_bytes(edge):
    lb, backend = edge
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    raw = await send_raw(lb.port(), post(b"Transfer-Encoding: chunked\r\nConnection: close\r\n", body))
    (answer,) = parse_responses(raw.data)
    assert answer.status == 200
    await settle()
    assert backend.count(path="/smuggled") == 0
    assert backend.bodies == [SMUGGLED]


async def test_trailers_are_accepted_but_not_forwarded(edge):
    lb, backend = edge
    body = b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n"
    raw = await send_raw(lb.port(), post(b"Transfer-Encoding: chunked\r\nConnection: close\r\n", body))
    (answer,) = parse_responses(raw.data)
    assert answer.status == 200
    assert backend.bodies == [b"hello"]


async def test_oversized_trailer_is_refused(edge):
    """Trailers are headers too: they count against max_header_bytes, however they trickle in."""
    lb, backend = edge
    head = post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\nX-Checksum: ")
    # A trailer that never ends: it must be cut off at the limit, not buffered without end.
    raw = await send_raw(lb.port(), [head] + [b"a" * 1000] * 20, pause=0.01)
    assert_refused(raw, 431)
    assert backend.bodies == []  # the request never completed


async def test_h2c_upgrade_without_connection_upgrade_is_plain_http(edge):
    """`Upgrade: h2c` that Connection does not name is no upgrade; its connection-specific
    headers must not reach the backend, so the backend cannot switch protocols either."""
    lb, backend = edge
    raw = await send_raw(lb.port(), b"GET /plain HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n"
                                    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    (answer,) = parse_responses(raw.data)
    assert answer.status == 200
    seen = {name.lower() for name in backend.seen_headers[-1]}
    assert "upgrade" not in seen
    assert "http2-settings" not in seen


async def test_refused_websocket_upgrade_does_not_tunnel_the_bytes_after_it(edge):
    """A backend that answers an Upgrade request without 101 has not switched protocols: bytes
    the client sent after the head must not reach it (a second request hidden behind an upgrade
    the backend then refuses is the classic WebSocket smuggling)."""
    lb, backend = edge
    backend.mode = "status:404"
    raw = await send_raw(lb.port(), b"GET /ws-refused HTTP/1.1\r\nHost: a.example\r\n"
                                    b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                         + SMUGGLED)
    answers = parse_responses(raw.data)
    assert [a.status for a in answers] == [404]
    assert raw.closed
    await settle()
    assert backend.count(path="/smuggled") == 0


async def test_balancer_still_serves_after_every_vector(edge):
    lb, backend = edge
    for param in VECTORS:
        await send_raw(lb.port(), param.values[0], timeout=0.5)
    raw = await send_raw(lb.port(), b"GET /after HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
    (answer,) = parse_responses(raw.data)
    assert answer.status == 200
    await settle()
    assert backend.count(path="/smuggled") == 0
    assert len(lb.app.listeners["public"].connections) == 0  # nothing leaked


async def test_head_answered_by_the_balancer_has_no_body(start_balancer, backends):
    """RFC 9110 §9.3.2: an answer to HEAD has no body, even the balancer's own JSON errors. A
    body there would be read by the client as the start of the next response on the
    connection: a response desync on the client's side."""
    (backend,) = await backends(1)
    lb = await start_balancer(f"""
        routes:
          - {{name: games, match: {{host: games.example.com}}, pool: web}}
        pools:
          web:
            backends: {pool_yaml([backend])}
        """)
    raw = await send_raw(lb.port(), b"HEAD /nowhere HTTP/1.1\r\nHost: other.example\r\n\r\n"
                                    b"GET /next HTTP/1.1\r\nHost: games.example.com\r\nConnection: close\r\n\r\n")
    answers = parse_responses(raw.data, head_requests=[True, False])
    assert [a.status for a in answers] == [404, 200]
    assert answers[0].body == b""
    assert int(answers[0].headers["content-length"]) > 0  # the length of the body a GET would get
