"""HTTP/2 for players (docs/configuration.md `listeners[].http2`, docs/security.md "HTTP/2"):
ALPN h2 on TLS, h2c with prior knowledge, each stream an exchange like an HTTP/1.1 request,
RFC 9113 §8 translation, flow control, GOAWAY on shutdown, WebSockets over HTTP/2 (RFC 8441).
Real clients: curl, h2load, and a Python h2 client."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
from pathlib import Path

import pytest
import trustme

from balancer.http.exchange import Exchange
from balancer.http.http2 import Http2Stream
from tests.conftest import pool_yaml

from tests.fakes.h2client import H2Client, RawH2, ws_text

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture
def pki(tmp_path: Path) -> tuple[trustme.CA, Path, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("casino.example.com", "a.example")
    chain, key, ca_file = tmp_path / "cert.pem", tmp_path / "cert.key", tmp_path / "ca.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return ca, chain, key, ca_file


def listeners(chain: Path, key: Path, extra: str = "") -> str:
    return f"""listeners:
  - name: tls
    address: 127.0.0.1:0
    tls: {{certificate: {chain}, key: {key}}}
  - name: h2c
    address: 127.0.0.1:0
    http2: true
  - name: plain
    address: 127.0.0.1:0
{extra}"""


async def edge(start_balancer, backends, pki, body_extra: str = "", top: str = ""):
    ca, chain, key, _ = pki
    bs = await backends(2)
    lb = await start_balancer(f"""
        {top}
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            {body_extra}
            backends: {pool_yaml(bs)}
        """, listeners=listeners(chain, key))
    return lb, bs, ca


async def curl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "20", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_curl_negotiates_h2_by_alpn_on_tls(start_balancer, backends, pki):
    lb, bs, _ = await edge(start_balancer, backends, pki)
    ca_file = pki[3]
    port = lb.port("tls")
    code, out, err = await curl("--http2", "--cacert", str(ca_file),
                                "--resolve", f"casino.example.com:{port}:127.0.0.1",
                                "-w", "\n%{http_version}", f"https://casino.example.com:{port}/lobby?x=1")
    assert code == 0, err
    body, version = out.rsplit("\n", 1)
    assert version == "2"
    seen = json.loads(body)
    assert seen["path"] == "/lobby?x=1"
    assert seen["headers"]["Host"] == f"casino.example.com:{port}"
    assert seen["headers"]["X-Forwarded-Proto"] == "https"


async def test_curl_http11_still_served_on_tls(start_balancer, backends, pki):
    lb, _, _ = await edge(start_balancer, backends, pki)
    port = lb.port("tls")
    code, out, err = await curl("--http1.1", "--cacert", str(pki[3]),
                                "--resolve", f"casino.example.com:{port}:127.0.0.1",
                                "-o", "/dev/null", "-w", "%{http_version}", f"https://casino.example.com:{port}/")
    assert code == 0, err
    assert out == "1.1"


async def test_curl_prior_knowledge_on_h2c_listener(start_balancer, backends, pki):
    lb, _, _ = await edge(start_balancer, backends, pki)
    code, out, err = await curl("--http2-prior-knowledge", "-w", "\n%{http_version}",
                                f"http://127.0.0.1:{lb.port('h2c')}/x")
    assert code == 0, err
    body, version = out.rsplit("\n", 1)
    assert version == "2"
    assert json.loads(body)["headers"]["X-Forwarded-Proto"] == "http"
    # HTTP/1.1 on the same listener is served as before.
    code, out, err = await curl("-o", "/dev/null", "-w", "%{http_version}", f"http://127.0.0.1:{lb.port('h2c')}/")
    assert (code, out) == (0, "1.1")


async def test_prior_knowledge_refused_where_http2_is_off(start_balancer, backends, pki):
    lb, _, _ = await edge(start_balancer, backends, pki)
    code, _, _ = await curl("--http2-prior-knowledge", f"http://127.0.0.1:{lb.port('plain')}/")
    assert code != 0
    # And `Upgrade: h2c` stays refused on an h2c listener too.
    answer = await lb.raw(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                          b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", listener="h2c")
    assert answer.startswith(b"HTTP/1.1 400")


async def test_many_streams_on_one_connection_with_bodies(start_balancer, backends, pki):
    lb, bs, ca = await edge(start_balancer, backends, pki)
    client = await H2Client.open(lb.port("tls"), ca)
    try:
        ids = [client.start("POST", f"/bet/{i}", [("content-type", "text/plain")], end=False)
               for i in range(20)]
        await asyncio.gather(*(client.send_body(stream_id, b"x" * (i * 1000)) for i, stream_id in enumerate(ids)))
        await client.until(lambda: all(client.responses[i].ended for i in ids))
        for n, stream_id in enumerate(ids):
            r = client.responses[stream_id]
            assert r.status == 200
            seen = json.loads(r.body)
            assert seen["path"] == f"/bet/{n}" and seen["body_bytes"] == n * 1000
            assert {k.lower() for k in seen["headers"]} >= {"x-request-id"}  # one per stream
            assert r.header(b"connection") is None
        # A body of unknown length (no content-length, several DATA frames) arrives whole.
        stream_id = client.start("PUT", "/upload", end=False)
        await client.send_body(stream_id, b"a" * 70000, end=False)
        await client.send_body(stream_id, b"b" * 30000)
        await client.until(lambda: client.responses[stream_id].ended)
        assert json.loads(client.responses[stream_id].body)["body_bytes"] == 100000
    finally:
        client.close()
    assert sum(b.count("POST") for b in bs) == 20


async def test_finished_streams_are_freed_without_the_cycle_collector(start_balancer, backends, pki):
    """A stream and its exchange point at each other until the exchange is over; then the
    stream lets it go, so a request leaves no cycle for the collector to find (it cost a
    tenth of an h2 request's CPU)."""
    lb, _, ca = await edge(start_balancer, backends, pki)
    client = await H2Client.open(lb.port("tls"), ca)
    try:
        gc.collect()
        gc.disable()
        try:
            ids = [client.start("GET", f"/lobby/{i}") for i in range(10)]
            await client.until(lambda: all(client.responses[i].ended for i in ids))
            alive = [o for o in gc.get_objects() if isinstance(o, (Http2Stream, Exchange))]
        finally:
            gc.enable()
        assert all(client.responses[i].status == 200 for i in ids)
        assert alive == []
    finally:
        client.close()


async def test_translation_cookies_host_and_te(start_balancer, backends, pki):
    lb, bs, ca = await edge(start_balancer, backends, pki)
    client = await H2Client.open(lb.port("tls"), ca)
    try:
        r = await client.request("GET", "/c", [("cookie", "a=1"), ("cookie", "b=2"), ("te", "trailers"),
                                               ("x-request-id", "abc-123")], authority="games.example:8443")
        assert r.status == 200
        headers = {k.lower(): v for k, v in json.loads(r.body)["headers"].items()}
        assert headers["cookie"] == "a=1; b=2"
        assert headers["host"] == "games.example:8443"
        assert "te" not in headers
        assert headers["x-request-id"] == "abc-123"
        # HEAD: the head only, the stream ends with it.
        r = await client.request("HEAD", "/h")
        assert r.status == 200 and r.ended and not r.body
        # The balancer's own answers travel as HTTP/2 too.
        r = await client.request("GET", "/x", authority="no-such-host.example")
        assert r.status in (200, 404)
    finally:
        client.close()


async def test_no_route_is_answered_on_its_stream(start_balancer, backends, pki):
    ca, chain, key, _ = pki
    bs = await backends(1)
    lb = await start_balancer(f"""
        routes:
          - {{name: games, match: {{host: games.example}}, pool: web}}
        pools:
          web:
            backends: {pool_yaml(bs)}
        """, listeners=listeners(chain, key))
    client = await H2Client.open(lb.port("tls"), ca)
    try:
        r = await client.request("GET", "/", authority="other.example")
        assert r.status == 404
        assert json.loads(r.body)["error"] == "no route"
        r = await client.request("GET", "/", authority="games.example")
        assert r.status == 200
        # CONNECT without :protocol is refused on its own stream; the connection lives on.
        stream_id = client.conn.get_next_available_stream_id()
        client.responses[stream_id] = type(r)()
        client.conn.send_headers(stream_id, [(b":method", b"CONNECT"), (b":authority", b"games.example:443")],
                                 end_stream=True)
        client.writer.write(client.conn.data_to_send())
        await client.until(lambda: client.responses[stream_id].ended)
        assert client.responses[stream_id].status == 501
        assert (await client.request("GET", "/", authority="games.example")).status == 200
    finally:
        client.close()


async def test_settings_advertise_limits(start_balancer, backends, pki):
    lb, _, ca = await edge(start_balancer, backends, pki, top="limits: {max_concurrent_streams: 7}")
    client = await H2Client.open(lb.port("tls"), ca)
    try:
        await client.until(lambda: 0x3 in client.remote_settings)
        assert client.remote_settings[0x3] == 7  # MAX_CONCURRENT_STREAMS
        assert client.remote_settings[0x8] == 1  # ENABLE_CONNECT_PROTOCOL (RFC 8441)
    finally:
        client.close()


async def test_slow_player_stalls_only_their_stream(start_balancer, backends, pki):
    """A stream whose window the player keeps shut holds its backend paused; the player's
    other streams, and other players, are served."""
    lb, bs, ca = await edge(start_balancer, backends, pki)
    slow = await H2Client.open(lb.port("tls"), ca)
    other = await H2Client.open(lb.port("tls"), ca)
    try:
        slow.auto_window = False
        big = slow.start("GET", "/stream/4000000")
        await slow.until(lambda: len(slow.responses[big].body) >= 65535)
        assert not slow.responses[big].ended
        # The same connection's other streams: small answers fit in the connection window? The
        # stream window of the stalled stream is its own; a new stream has a fresh one.
        r = await other.request("GET", "/other")
        assert r.status == 200
        # The stalled stream resumes when the player reads again.
        slow.auto_window = True
        slow.conn.acknowledge_received_data(len(slow.responses[big].body), big)
        slow.conn.increment_flow_control_window(4000000, big)
        slow.conn.increment_flow_control_window(4000000)
        slow.writer.write(slow.conn.data_to_send())
        await slow.until(lambda: slow.responses[big].ended, timeout=60)
        assert len(slow.responses[big].body) == 4000000
    finally:
        slow.close()
        other.close()


async def test_goaway_on_shutdown_lets_open_streams_finish(start_balancer, backends, pki):
    """GOAWAY (NO_ERROR, the last stream id) as the shutdown begins; the open stream is still
    answered in full. (A raw client: h2 as a client stops reading at GOAWAY.)"""
    ca, chain, key, _ = pki
    bs = await backends(1)
    bs[0].mode = "hang"
    bs[0].hang_seconds = 1.0
    lb = await start_balancer(f"""
        shutdown_timeout: 30s
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            backends: {pool_yaml(bs)}
        """, listeners=listeners(chain, key))
    raw = await RawH2.open(lb.port("h2c"))
    try:
        raw.send(raw.headers(1, RawH2.get(1, "/slow")))
        while bs[0].count() == 0:
            await asyncio.sleep(0.01)
        stop = asyncio.get_running_loop().create_task(lb.app.shutdown())
        assert await raw.graceful_goaway_then_answer(1) == b"200"
        await stop
    finally:
        raw.close()


async def test_h2load_many_streams(start_balancer, backends, pki):
    if shutil.which("h2load") is None:
        pytest.skip("h2load is not installed")
    lb, _, _ = await edge(start_balancer, backends, pki)
    proc = await asyncio.create_subprocess_exec(
        "h2load", "-n", "400", "-c", "4", "-m", "20", f"https://127.0.0.1:{lb.port('tls')}/",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    text = out.decode()
    assert "Application protocol: h2" in text
    assert "400 succeeded, 0 failed, 0 errored" in text, text
    assert "status codes: 400 2xx" in text, text


async def test_websocket_over_http2(start_balancer, backends, pki):
    """RFC 8441: an extended CONNECT for `websocket` becomes an HTTP/1.1 Upgrade to the backend;
    frames flow both ways in DATA; it counts as a WebSocket on its backend, and ends cleanly."""
    lb, bs, ca = await edge(start_balancer, backends, pki)
    client = await H2Client.open(lb.port("tls"), ca, validate=False)
    try:
        await client.until(lambda: client.remote_settings.get(0x8) == 1)
        stream_id = client.start("CONNECT", "/ws/table-7", [(":protocol", "websocket"),
                                                          ("sec-websocket-version", "13")], end=False)
        response = client.responses[stream_id]
        await client.until(lambda: response.status != 0)
        assert response.status == 200
        assert response.header(b"sec-websocket-accept") is None
        client.send_data(stream_id, ws_text("hello"))
        await client.until(lambda: b"hello" in response.body)
        served_by = [b for b in bs if b.count("WS") == 1][0]
        assert bytes(response.body[2:]) == f"{served_by.name}:hello".encode()
        runtime_backends = [b for pool in lb.app.pools.values() for b in pool.backends.values()]
        assert sum(b.websockets for b in runtime_backends) == 1
        # The player ends the stream: the tunnel closes, the count goes back.
        client.send_data(stream_id, b"", end=True)
        await client.until(lambda: response.ended or response.reset is not None)
        while sum(b.websockets for b in runtime_backends):
            await asyncio.sleep(0.01)
        # The connection still carries requests.
        assert (await client.request("GET", "/after")).status == 200
    finally:
        client.close()


async def test_per_stream_features_as_http11(start_balancer, backends, pki):
    """Sticky cookies (Secure on TLS), geo (451 for a blocked country, the region header), and
    the request counters work per stream as per HTTP/1.1 request."""
    ca, chain, key, _ = pki
    bs = await backends(("eu-1", "eu-west"), ("eu-2", "eu-west"))
    lb = await start_balancer(f"""
        trusted_proxies: [127.0.0.0/8]
        geo:
          regions: {{eu-west: [DE]}}
          default_region: eu-west
          blocked_countries: [FR]
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            geo: true
            sticky: {{cookie: LB_GAME, ttl: 1h}}
            backends: {pool_yaml(bs)}
        """, listeners=listeners(chain, key))
    client = await H2Client.open(lb.port("tls"), ca)
    try:
        r = await client.request("GET", "/", [("cf-ipcountry", "FR")])
        assert r.status == 451
        r = await client.request("GET", "/", [("cf-ipcountry", "DE")])
        assert r.status == 200
        cookie = r.header(b"set-cookie")
        assert cookie is not None and b"Secure" in cookie
        first = json.loads(r.body)
        assert {k.lower(): v for k, v in first["headers"].items()}["x-client-region"] == "eu-west"
        pair = cookie.split(b";", 1)[0].decode()
        for _ in range(6):
            again = await client.request("GET", "/", [("cf-ipcountry", "DE"), ("cookie", pair)])
            assert json.loads(again.body)["backend"] == first["backend"]
    finally:
        client.close()


async def test_access_log_says_http2(start_balancer, backends, pki, tmp_path: Path):
    from tests.integration.test_access_log import line_for

    ca, chain, key, _ = pki
    bs = await backends(1)
    log = tmp_path / "access.log"
    lb = await start_balancer(f"""
        access_log: {{path: '{log}'}}
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            backends: {pool_yaml(bs)}
        """, listeners=listeners(chain, key))
    client = await H2Client.open(lb.port("tls"), ca)
    try:
        r = await client.request("GET", "/audited", [("x-request-id", "h2-audit-1")])
        assert r.status == 200
    finally:
        client.close()
    line = await line_for(lb, log, "h2-audit-1")
    assert line["protocol"] == "HTTP/2.0"
    assert line["tls"].startswith("TLSv1.")
    assert line["status"] == 200, line
