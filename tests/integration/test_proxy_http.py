"""HTTP/1.1 forwarding through the real balancer (docs/architecture.md, "Forwarding";
docs/security.md; `limits` in docs/configuration.md).

Every test starts real backends and the real balancer on loopback ports the OS picks. Where
the exact bytes matter (pipelining, framing, hop-by-hop headers) the client is a raw socket and
the backend a `RawBackend` that records the request heads as the balancer sent them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid

import pytest

from tests.conftest import Running, one_pool, pool_yaml
from tests.fakes.backends import Backend, free_port
from tests.fakes.rawhttp import RawBackend, RawResponse, closed_after, read_head, read_response
from tests.waiting import eventually

HOST = b"casino.test"


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + HOST + b"\r\n" + extra + b"\r\n"


async def connect(lb: Running) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", lb.port())


async def exchange(lb: Running, data: bytes) -> RawResponse:
    reader, writer = await connect(lb)
    writer.write(data)
    try:
        return await read_response(reader)
    finally:
        writer.close()


def assert_own_error(response: RawResponse, status: int) -> dict:
    """The balancer's own answers: the status, and a small JSON body naming the request."""
    assert response.status == status, response.body
    assert response.header("content-type") == "application/json"
    body = response.json()
    assert set(body) == {"error", "request_id"}
    assert body["error"] and isinstance(body["error"], str)
    assert body["request_id"] == response.header("x-request-id")
    return body


async def one_backend(start_balancer, backends, pool_extra: str = "",
                      top: str = "") -> tuple[Running, Backend]:
    """The balancer in front of one backend, with `one_pool`'s config and extras."""
    (b,) = await backends(1)
    return await start_balancer(one_pool([b], pool_extra, top)), b


async def raw_backend(response: bytes | None = None) -> RawBackend:
    backend = RawBackend() if response is None else RawBackend(response=response)
    return await backend.start()




# -- 1. keep-alive and pipelining --------------------------------------------------------------


async def test_keep_alive_requests_share_one_client_and_one_backend_connection(start_balancer, backends):
    lb, b = await one_backend(start_balancer, backends)
    reader, writer = await connect(lb)
    for i in range(5):
        writer.write(get(f"/round/{i}"))
        response = await read_response(reader)
        assert response.status == 200
        assert response.json()["path"] == f"/round/{i}"
    assert b.count() == 5
    backend = lb.app.pools["web"].backends["b1"]
    assert backend.open_connections == 1  # the pooled connection carried all five

    # Another player's connection reuses the same pooled backend connection.
    reader2, writer2 = await connect(lb)
    writer2.write(get("/other"))
    assert (await read_response(reader2)).status == 200
    assert backend.open_connections == 1
    assert len(lb.app.listeners["public"].connections) == 2
    writer.close()
    writer2.close()


async def test_pipelined_requests_are_answered_in_order(start_balancer, backends):
    lb, b = await one_backend(start_balancer, backends)
    reader, writer = await connect(lb)
    writer.write(get("/first")
                 + b"POST /second HTTP/1.1\r\nHost: casino.test\r\nContent-Length: 11\r\n\r\nhello world"
                 + get("/third"))
    answers = [(await read_response(reader)).json() for _ in range(3)]
    assert [a["path"] for a in answers] == ["/first", "/second", "/third"]
    assert [a["method"] for a in answers] == ["GET", "POST", "GET"]
    assert answers[1]["body_bytes"] == 11
    assert b.bodies[1] == b"hello world"
    writer.close()


@pytest.mark.parametrize("good", [1, 2])
async def test_a_bad_pipelined_request_is_answered_after_the_good_ones_before_it(start_balancer, backends, good):
    lb, b = await one_backend(start_balancer, backends)
    reader, writer = await connect(lb)
    bad = b"POST /bad HTTP/1.1\r\nHost: casino.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
    writer.write(b"".join(get(f"/good/{i}") for i in range(good)) + bad + get("/never"))
    for i in range(good):
        response = await read_response(reader)
        assert response.status == 200 and response.json()["path"] == f"/good/{i}"
    assert_own_error(await read_response(reader), 400)
    assert await closed_after(reader)
    assert b.count() == good  # the good ones were served; nothing at or after the bad one


async def test_head_and_bodiless_statuses_keep_the_connection_in_step(start_balancer, backends):
    """HEAD, 204 and 304 have no body whatever their headers say; the next answer must not
    be swallowed as one."""
    lb, b = await one_backend(start_balancer, backends)
    reader, writer = await connect(lb)
    writer.write(b"HEAD /lobby HTTP/1.1\r\nHost: casino.test\r\n\r\n")
    head = await read_response(reader, head_request=True)
    assert head.status == 200 and int(head.header("content-length") or 0) > 0
    for code in (204, 304):
        b.mode = f"status:{code}"
        writer.write(get("/bodiless"))
        assert (await read_response(reader)).status == code
    b.mode = "ok"
    writer.write(get("/after"))
    response = await read_response(reader)
    assert response.status == 200 and response.json()["path"] == "/after"
    writer.close()


async def test_client_connection_close_is_honoured(start_balancer, backends):
    lb, b = await one_backend(start_balancer, backends)
    reader, writer = await connect(lb)
    writer.write(get("/", b"Connection: close\r\n"))
    response = await read_response(reader)
    assert response.status == 200 and response.header("connection") == "close"
    assert await closed_after(reader)


async def test_backend_connection_close_is_not_pooled(start_balancer):
    backend = await raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    try:
        lb = await start_balancer(one_pool([backend]))
        reader, writer = await connect(lb)
        for _ in range(3):
            writer.write(get("/"))
            response = await read_response(reader)
            assert response.status == 200 and response.body == b"ok"
            assert response.header("connection") is None  # the backend's close is not the client's
        assert backend.connections == 3
        assert await eventually(lambda: lb.app.pools["web"].backends["raw"].open_connections == 0)
        writer.close()
    finally:
        await backend.stop()


async def test_close_delimited_backend_body_is_reframed_for_the_client(start_balancer):
    async def old_backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nX-Game: poker\r\n\r\nbody until close")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(old_backend, "127.0.0.1", 0)
    try:
        lb = await start_balancer(f"""
            routes:
              - {{name: all, pool: web}}
            pools:
              web:
                backends: [{{id: old, address: '127.0.0.1:{server.sockets[0].getsockname()[1]}'}}]
            """)
        reader, writer = await connect(lb)
        for _ in range(2):  # chunked for an HTTP/1.1 player, so the connection stays usable
            writer.write(get("/"))
            response = await read_response(reader)
            assert response.header("transfer-encoding") == "chunked"
            assert response.body == b"body until close"
        writer.write(b"GET / HTTP/1.0\r\nHost: casino.test\r\n\r\n")
        response = await read_response(reader)  # an HTTP/1.0 player reads until close instead
        assert response.header("transfer-encoding") is None and response.header("connection") == "close"
        assert response.body == b"body until close"
    finally:
        server.close()


async def test_http10_client_gets_a_close_delimited_or_framed_answer(start_balancer, backends):
    lb, b = await one_backend(start_balancer, backends)
    reader, writer = await connect(lb)
    writer.write(b"GET /old HTTP/1.0\r\n\r\n")
    response = await read_response(reader)
    assert response.status == 200 and response.json()["path"] == "/old"
    assert await closed_after(reader)  # HTTP/1.0 without keep-alive: one request, then close


# -- 2. bodies stream both ways ----------------------------------------------------------------


async def test_content_length_upload_of_several_mb_arrives_intact(start_balancer, backends, http):
    lb, b = await one_backend(start_balancer, backends)
    payload = os.urandom(5 * 1024 * 1024)
    async with http.post(lb.url + "/upload", data=payload) as resp:
        assert resp.status == 200
        assert (await resp.json())["body_bytes"] == len(payload)
    assert b.bodies[-1] == payload


async def test_chunked_upload_of_several_mb_arrives_intact_and_chunked(start_balancer, backends, http):
    lb, b = await one_backend(start_balancer, backends)
    pieces = [os.urandom(65536) for _ in range(96)]  # 6 MiB, no length known up front

    async def stream():
        for piece in pieces:
            yield piece

    async with http.post(lb.url + "/upload", data=stream()) as resp:
        assert resp.status == 200
    assert b.bodies[-1] == b"".join(pieces)
    # Framing is preserved: the backend was sent a chunked body, not a buffered one.
    assert b.seen_headers[-1].get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in b.seen_headers[-1]


async def test_chunked_response_of_several_mb_arrives_intact(start_balancer, backends, http):
    lb, b = await one_backend(start_balancer, backends)
    size = 8 * 1024 * 1024 + 123
    async with http.get(lb.url + f"/stream/{size}") as resp:
        assert resp.status == 200
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        body = await resp.read()
    assert len(body) == size and body == b"x" * size


async def test_a_client_that_does_not_read_does_not_make_the_balancer_buffer(start_balancer, backends):
    """50 MB to a player who stops reading: the balancer must pause the backend, not hold it."""
    lb, b = await one_backend(start_balancer, backends)
    size = 50 * 1024 * 1024
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", lb.port()))
    await loop.sock_sendall(sock, get(f"/stream/{size}"))

    assert await eventually(lambda: b.count(path="/stream") == 1)
    (client,) = lb.app.listeners["public"].connections
    largest = 0
    for _ in range(50):  # one second of not reading
        await asyncio.sleep(0.02)
        assert client.transport is not None
        largest = max(largest, client.transport.get_write_buffer_size())
    assert client.exchange is not None  # the response is still on its way, held back
    assert largest < 8 * 1024 * 1024, f"balancer buffered {largest} bytes for a stalled client"

    # Once the player reads again, every byte arrives.
    received = bytearray()
    while True:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5)
        received += chunk
        if received.endswith(b"\r\n0\r\n\r\n"):
            break
    sock.close()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body.count(b"x") == size


async def test_a_stalled_client_stays_paused_across_pipelined_responses(start_balancer, backends):
    """A player stops reading just as one response ends: the next pipelined response, from a
    newly opened backend connection, must not be read into memory whole.

    asyncio calls pause_writing once, on the transition; a backend connection attached while
    the player is already paused never hears of it unless the exchange checks. Which first
    response size ends exactly on that transition depends on kernel buffers, so the test
    pins them small and tries a range of sizes."""
    (b,) = await backends(1)
    first = await raw_backend()
    try:
        lb = await start_balancer(f"""
            routes:
              - {{name: all, pool: web}}
            pools:
              web:
                balance: round_robin
                backends: {pool_yaml([first, b])}
            """)
        server = lb.app.listeners["public"]
        loop = asyncio.get_running_loop()
        largest = 0
        for size in range(64 * 1024, 160 * 1024, 8 * 1024):
            first.response = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size
                              + b"r" * size)
            lb.app.runtime.pools["web"].strategy = type(lb.app.runtime.pools["web"].strategy)()  # first, then b
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", lb.port()))
            assert await eventually(lambda: len(server.connections) == 1)
            (client,) = server.connections
            assert client.transport is not None
            client.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await loop.sock_sendall(sock, get("/first") + get(f"/stream/{20 * 1024 * 1024}"))
            for _ in range(8):
                await asyncio.sleep(0.02)
                if client.transport is not None:
                    largest = max(largest, client.transport.get_write_buffer_size())
            sock.close()
            assert await eventually(lambda: not server.connections)
        assert b.count(path="/stream") > 0  # the second responses did start
        assert largest < 8 * 1024 * 1024, f"balancer buffered {largest} bytes for a stalled client"
    finally:
        await first.stop()


async def test_a_backend_that_does_not_read_pauses_the_uploading_client(start_balancer):
    """A slow backend reading a big upload: the balancer stops reading the player meanwhile."""
    go = asyncio.Event()
    received: list[int] = []

    async def slow_backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await go.wait()  # not reading: the kernel buffers fill, then the balancer must stop
        body = await reader.readexactly(length)
        received.append(len(body))
        answer = str(len(body)).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow_backend, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lb = await start_balancer(f"""
        limits: {{max_body_bytes: 67108864}}
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            backends: [{{id: slow, address: '127.0.0.1:{port}'}}]
        """)
    size = 40 * 1024 * 1024
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", lb.port()))
    head = b"PUT /upload HTTP/1.1\r\nHost: casino.test\r\nContent-Length: %d\r\n\r\n" % size
    sending = asyncio.ensure_future(loop.sock_sendall(sock, head + b"u" * size))
    try:
        largest = 0
        assert await eventually(lambda: len(lb.app.listeners["public"].connections) == 1)
        (client,) = lb.app.listeners["public"].connections
        for _ in range(50):
            await asyncio.sleep(0.02)
            upstream = client.exchange.upstream if client.exchange is not None else None
            if upstream is not None and upstream.transport is not None:
                largest = max(largest, upstream.transport.get_write_buffer_size())
        assert not sending.done(), "the whole upload was taken in while the backend read nothing"
        assert largest < 8 * 1024 * 1024, f"balancer buffered {largest} bytes for a stalled backend"
        go.set()
        await asyncio.wait_for(sending, 10)
        reader = asyncio.StreamReader()
        data = b""
        while not data.endswith(str(size).encode()):
            data += await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
        reader.feed_data(data)
        response = await read_response(reader)
        assert response.status == 200 and response.body == str(size).encode()
        assert received == [size]
    finally:
        sending.cancel()
        sock.close()
        server.close()


# -- 3. Expect: 100-continue -------------------------------------------------------------------


async def test_expect_100_continue_is_answered_before_the_body_is_sent(start_balancer, backends):
    lb, b = await one_backend(start_balancer, backends)
    reader, writer = await connect(lb)
    writer.write(b"POST /bet HTTP/1.1\r\nHost: casino.test\r\nExpect: 100-continue\r\n"
                 b"Content-Length: 11\r\n\r\n")
    interim = await read_head(reader, timeout=3)
    assert (interim.status, interim.reason) == (100, "Continue")
    writer.write(b"hello world")
    final = await read_response(reader)
    assert final.status == 200
    assert final.json()["body_bytes"] == 11
    assert b.bodies == [b"hello world"]
    writer.close()


async def test_expect_100_continue_with_a_body_too_large_is_refused_without_the_body(start_balancer, backends):
    lb, b = await one_backend(start_balancer, backends, top="limits: {max_body_bytes: 1000}")
    reader, writer = await connect(lb)
    writer.write(b"POST /bet HTTP/1.1\r\nHost: casino.test\r\nExpect: 100-continue\r\n"
                 b"Content-Length: 5000\r\n\r\n")
    assert_own_error(await read_response(reader), 413)
    assert await closed_after(reader)
    assert b.count() == 0


# -- 4. hop-by-hop and forwarding headers ------------------------------------------------------

HOP_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Backend-Hop\r\n"
                b"X-Backend-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
                b"TE: trailers\r\nTrailer: X-Checksum\r\nUpgrade: h2c\r\nX-End-To-End: yes\r\n\r\nok")

REQUEST_HOP_HEADERS = (b"Connection: keep-alive, X-Client-Hop\r\nX-Client-Hop: secret\r\n"
                       b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n"
                       b"Trailer: X-Checksum\r\nUpgrade: h2c\r\nX-End-To-End: yes\r\n")


async def test_hop_by_hop_headers_are_not_forwarded_either_way(start_balancer):
    backend = await raw_backend(HOP_RESPONSE)
    try:
        lb = await start_balancer(one_pool([backend]))
        response = await exchange(lb, get("/", REQUEST_HOP_HEADERS))
        assert response.status == 200 and response.body == b"ok"
        (seen,) = backend.seen
        for name in ("connection", "x-client-hop", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"):
            assert name not in seen.names(), f"{name} reached the backend"
        assert seen.header("x-end-to-end") == "yes"
        for name in ("x-backend-hop", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"):
            assert name not in response.names(), f"{name} reached the client"
        assert response.header("connection") in (None, "keep-alive", "close")
        assert response.header("x-end-to-end") == "yes"
    finally:
        await backend.stop()


# Names past 63 bytes: past the length mask that most names are told apart by (headers.pxd).
LONG_HOP = b"X-Hop-" + b"h" * 70
LONG_KEPT = b"X-Kept-" + b"k" * 70


@pytest.mark.parametrize("connection", [b"keep-alive", b"keep-alive, " + LONG_HOP])
async def test_forwarded_fields_arrive_once_each_in_order_as_sent(start_balancer, connection):
    """Both heads are written anew field by field: every end-to-end field arrives once, in
    order, its name as sent; the hop-by-hop ones and what Connection names (of any length) are
    left out, whether Connection names only keep-alive or more."""
    fields = (b"X-A: 1\r\nConnection: " + connection + b"\r\nx-b: 2\r\nKeep-Alive: timeout=5\r\n"
              + LONG_HOP + b": secret\r\nX-A: 3\r\n" + LONG_KEPT + b": long\r\nTE: trailers\r\n")
    backend = await raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + fields + b"\r\nok")
    try:
        lb = await start_balancer(one_pool([backend]))
        response = await exchange(lb, get("/", fields))
        assert response.status == 200 and response.body == b"ok"
        (seen,) = backend.seen
        long_hop, long_kept = LONG_HOP.decode().lower(), LONG_KEPT.decode().lower()
        dropped = ("connection", "keep-alive", "te") + ((long_hop,) if LONG_HOP in connection else ())
        end_to_end = [(n, v) for n, v in [("x-a", "1"), ("x-b", "2"), (long_hop, "secret"), ("x-a", "3"),
                                          (long_kept, "long")] if n not in dropped]
        assert [(n, v) for n, v in seen.headers if n in {"x-a", "x-b", long_hop, long_kept}] == end_to_end
        assert not set(dropped) & seen.names()
        assert [(n, v) for n, v in response.headers if n in {"x-a", "x-b", long_hop, long_kept}] == end_to_end
        assert not (set(dropped) - {"connection"}) & response.names()
        assert b"\r\nX-A: 1\r\n" in response.raw_head and b"\r\nx-b: 2\r\n" in response.raw_head
        assert b"\r\n" + LONG_KEPT + b": long\r\n" in response.raw_head
    finally:
        await backend.stop()


async def test_untrusted_peer_x_forwarded_for_is_replaced(start_balancer):
    backend = await raw_backend()
    try:
        lb = await start_balancer(one_pool([backend]))
        await exchange(lb, get("/", b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n"))
        (seen,) = backend.seen
        assert seen.all("x-forwarded-for") == ["127.0.0.1"]
        assert seen.all("x-forwarded-proto") == ["http"]  # the client's claim is not believed
    finally:
        await backend.stop()


async def test_trusted_peer_x_forwarded_for_is_appended_to(start_balancer):
    backend = await raw_backend()
    try:
        lb = await start_balancer(one_pool([backend], top="trusted_proxies: [127.0.0.0/8]"))
        await exchange(lb, get("/", b"X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\n"))
        (seen,) = backend.seen
        assert seen.all("x-forwarded-for") == ["1.2.3.4, 5.6.7.8, 127.0.0.1"]
    finally:
        await backend.stop()


@pytest.mark.parametrize("trusted", [False, True])
async def test_connection_header_cannot_remove_what_the_balancer_adds(start_balancer, trusted):
    backend = await raw_backend()
    try:
        top = "trusted_proxies: [127.0.0.0/8]" if trusted else ""
        lb = await start_balancer(one_pool([backend], top=top))
        await exchange(lb, get("/", b"Connection: X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, "
                                    b"X-Request-Id\r\nX-Forwarded-For: 6.6.6.6\r\n"))
        (seen,) = backend.seen
        (xff,) = seen.all("x-forwarded-for")
        assert xff.split(", ")[-1] == "127.0.0.1"
        assert seen.all("x-forwarded-proto") == ["http"]
        assert seen.all("x-forwarded-host") == ["casino.test"]
        assert len(seen.all("x-request-id")) == 1
    finally:
        await backend.stop()


async def test_x_forwarded_host_is_the_host_as_sent(start_balancer):
    backend = await raw_backend()
    try:
        lb = await start_balancer(one_pool([backend]))
        await exchange(lb, b"GET / HTTP/1.1\r\nHost: Casino.Test:8080\r\nX-Forwarded-Host: evil.test\r\n\r\n")
        (seen,) = backend.seen
        assert seen.all("x-forwarded-host") == ["Casino.Test:8080"]
        assert seen.all("host") == ["Casino.Test:8080"]
    finally:
        await backend.stop()


@pytest.mark.parametrize("sent, kept", [
    ("abc-123_X.y", True),
    ("a" * 128, True),
    ("a" * 129, False),
    ("has space", False),
    ("semi;colon", False),
    ("", False),
])
async def test_x_request_id_kept_when_well_formed_else_a_uuid4(start_balancer, sent, kept):
    backend = await raw_backend()
    try:
        lb = await start_balancer(one_pool([backend]))
        await exchange(lb, get("/", b"X-Request-Id: " + sent.encode() + b"\r\n"))
        (seen,) = backend.seen
        (request_id,) = seen.all("x-request-id")
        if kept:
            assert request_id == sent
        else:
            assert uuid.UUID(request_id).version == 4
    finally:
        await backend.stop()


async def test_generated_request_ids_differ(start_balancer):
    backend = await raw_backend()
    try:
        lb = await start_balancer(one_pool([backend]))
        for _ in range(3):
            await exchange(lb, get("/"))
        ids = [s.header("x-request-id") for s in backend.seen]
        assert len(set(ids)) == 3
    finally:
        await backend.stop()


# -- 5. timeouts towards backends --------------------------------------------------------------


async def test_connect_failure_is_502_json(start_balancer):
    closed = free_port()
    lb = await start_balancer(f"""
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            backends: [{{id: gone, address: '127.0.0.1:{closed}'}}]
            timeouts: {{connect: 300ms}}
        """)
    assert_own_error(await exchange(lb, get("/")), 502)


async def test_backend_hanging_past_response_timeout_is_504_json(start_balancer, backends):
    (b,) = await backends(1)
    b.mode = "hang"
    b.hang_seconds = 5
    lb = await start_balancer(one_pool([b], "timeouts: {response: 300ms}"))
    # The balancer's own 504: the backend would answer 200 after its 5 s.
    assert_own_error(await exchange(lb, get("/slow")), 504)
    assert b.count() == 1  # one backend, no retry of a timeout by default


async def test_backend_reset_is_502_json(start_balancer, backends):
    (b,) = await backends(1)
    b.mode = "reset"
    lb = await start_balancer(one_pool([b]))
    assert_own_error(await exchange(lb, get("/")), 502)


async def test_idle_pooled_backend_connections_expire(start_balancer, backends):
    lb, b = await one_backend(start_balancer, backends, "timeouts: {idle: 300ms}")
    backend = lb.app.pools["web"].backends["b1"]
    assert (await exchange(lb, get("/"))).status == 200
    assert backend.open_connections == 1 and len(backend.idle) == 1
    assert await eventually(lambda: backend.open_connections == 0)
    assert backend.idle == []
    assert (await exchange(lb, get("/again"))).status == 200  # a fresh connection serves on


# -- 6. the balancer's own errors ----------------------------------------------------------------


async def test_no_route_is_404(start_balancer, backends):
    (b,) = await backends(1)
    lb = await start_balancer(f"""
        routes:
          - {{name: api, match: {{host: api.example.com}}, pool: web}}
        pools:
          web:
            backends: {pool_yaml([b])}
        """)
    body = assert_own_error(await exchange(lb, get("/", b"X-Request-Id: trace-1\r\n")), 404)
    assert body["request_id"] == "trace-1"
    assert b.count() == 0


async def test_malformed_request_is_400_and_closed(start_balancer, backends):
    lb, b = await one_backend(start_balancer, backends)
    reader, writer = await connect(lb)
    writer.write(b"GET / HTTP/1.1\r\nHost: casino.test\r\nBad Header\r\n\r\n")
    assert_own_error(await read_response(reader), 400)
    assert await closed_after(reader)


async def test_declared_body_over_max_body_bytes_is_413(start_balancer, backends):
    lb, b = await one_backend(start_balancer, backends, top="limits: {max_body_bytes: 1000}")
    response = await exchange(lb, b"POST / HTTP/1.1\r\nHost: casino.test\r\nContent-Length: 1001\r\n\r\n"
                              + b"x" * 1001)
    assert_own_error(response, 413)
    assert b.count() == 0


async def test_chunked_body_streaming_over_max_body_bytes_is_413(start_balancer, backends):
    lb, b = await one_backend(start_balancer, backends, top="limits: {max_body_bytes: 1000}")
    reader, writer = await connect(lb)
    writer.write(b"POST /bet HTTP/1.1\r\nHost: casino.test\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        writer.write(b"258\r\n" + b"x" * 600 + b"\r\n")
        await asyncio.sleep(0.05)
    assert_own_error(await read_response(reader), 413)
    assert await closed_after(reader)
    await asyncio.sleep(0.1)
    assert b.bodies == []  # the backend never got a complete (over-limit) body


async def test_url_over_max_url_bytes_is_414(start_balancer, backends):
    lb, b = await one_backend(start_balancer, backends, top="limits: {max_url_bytes: 200}")
    assert (await exchange(lb, get("/" + "u" * 150))).status == 200
    assert_own_error(await exchange(lb, get("/" + "u" * 250)), 414)
    assert b.count() == 1


async def test_header_bytes_over_max_header_bytes_is_431(start_balancer, backends):
    lb, b = await one_backend(start_balancer, backends, top="limits: {max_header_bytes: 2000}")
    assert (await exchange(lb, get("/", b"X-Big: " + b"v" * 1000 + b"\r\n"))).status == 200
    assert_own_error(await exchange(lb, get("/", b"X-Big: " + b"v" * 3000 + b"\r\n")), 431)
    assert b.count() == 1


async def test_header_count_over_max_header_count_is_431(start_balancer, backends):
    lb, b = await one_backend(start_balancer, backends, top="limits: {max_header_count: 10}")
    assert (await exchange(lb, get("/", b"".join(b"X-%d: v\r\n" % i for i in range(8))))).status == 200
    assert_own_error(await exchange(lb, get("/", b"".join(b"X-%d: v\r\n" % i for i in range(12)))), 431)
    assert b.count() == 1


async def test_incomplete_head_gets_408_at_header_timeout(start_balancer, backends):
    lb, b = await one_backend(start_balancer, backends, top="limits: {header_timeout: 300ms}")
    reader, writer = await connect(lb)
    writer.write(b"GET / HTTP/1.1\r\nHost: casino.test\r\n")
    assert_own_error(await read_response(reader, timeout=3), 408)
    assert await closed_after(reader)
    assert b.count() == 0


async def test_slowloris_trickle_gets_408_at_the_deadline_not_later(start_balancer, backends):
    lb, b = await one_backend(start_balancer, backends, top="limits: {header_timeout: 500ms}")
    reader, writer = await connect(lb)
    started = time.monotonic()

    async def trickle() -> None:
        # One byte every 50 ms: each arrives well within any per-packet timeout.
        for byte in b"GET / HTTP/1.1\r\nHost: casino.test\r\nX-Slow: " + b"z" * 200:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    sender = asyncio.ensure_future(trickle())
    try:
        response = await read_response(reader, timeout=20)
        elapsed = time.monotonic() - started
    finally:
        sender.cancel()
    assert_own_error(response, 408)
    # The trickle lasts about 11 s: a deadline re-armed per byte would answer after it.
    assert elapsed < 8.0, f"408 came {elapsed:.2f}s after connect; header_timeout is 0.5s"
    assert b.count() == 0


async def test_second_request_on_a_connection_also_has_a_header_deadline(start_balancer, backends):
    lb, b = await one_backend(start_balancer, backends,
                              top="limits: {header_timeout: 300ms, client_idle_timeout: 5s}")
    reader, writer = await connect(lb)
    writer.write(get("/"))
    assert (await read_response(reader)).status == 200
    writer.write(b"GET /second HTTP/1.1\r\nHost: ")
    assert_own_error(await read_response(reader, timeout=3), 408)


async def test_a_head_begun_during_the_previous_exchange_is_still_due_at_header_timeout(start_balancer, backends):
    """Half a pipelined head sent while the first request is in flight must not buy the
    (longer) keep-alive idle time once the first is answered."""
    (b,) = await backends(1)
    b.mode = "hang"
    b.hang_seconds = 0.3
    lb = await start_balancer(one_pool([b], top="limits: {header_timeout: 300ms, client_idle_timeout: 10s}"))
    reader, writer = await connect(lb)
    writer.write(get("/slow") + b"GET /second HTTP/1.1\r\nHo")
    assert (await read_response(reader)).status == 200
    assert_own_error(await read_response(reader, timeout=3), 408)
    assert await closed_after(reader)
    assert b.count() == 1


async def test_idle_keep_alive_connection_is_closed_quietly(start_balancer, backends):
    lb, b = await one_backend(start_balancer, backends, top="limits: {client_idle_timeout: 300ms}")
    reader, writer = await connect(lb)
    writer.write(get("/"))
    assert (await read_response(reader)).status == 200
    # Closed with no 408 (nothing was asked); a connection never closed would hang here.
    assert await asyncio.wait_for(reader.read(), 20) == b""


async def test_pool_with_every_backend_drained_is_503_with_retry_after(start_balancer, backends, http):
    bs = await backends(2)
    lb = await start_balancer(one_pool(bs))
    for b in bs:
        async with http.post(f"{lb.admin_url}/admin/pools/web/backends/{b.name}/drain") as resp:
            assert resp.status == 200
    response = await exchange(lb, get("/"))
    assert_own_error(response, 503)
    assert response.header("retry-after") == "1"
    assert sum(b.count() for b in bs) == 0


# -- 7. strict framing end to end ------------------------------------------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: casino.test\r\n\r\n"
BAD_REQUESTS = {
    "content-length with transfer-encoding":
        b"POST /a HTTP/1.1\r\nHost: casino.test\r\nContent-Length: 47\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
    "two different content-lengths":
        b"POST /a HTTP/1.1\r\nHost: casino.test\r\nContent-Length: 0\r\nContent-Length: 46\r\n\r\n" + SMUGGLED,
    "malformed content-length":
        b"POST /a HTTP/1.1\r\nHost: casino.test\r\nContent-Length: 0x2e\r\n\r\n" + SMUGGLED,
    "transfer-encoding gzip":
        b"POST /a HTTP/1.1\r\nHost: casino.test\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "transfer-encoding xchunked":
        b"POST /a HTTP/1.1\r\nHost: casino.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "http/1.1 without host": b"GET /a HTTP/1.1\r\nX-A: b\r\n\r\n" + SMUGGLED,
    "absolute-form for a foreign host":
        b"GET http://evil.test/a HTTP/1.1\r\nHost: casino.test\r\n\r\n" + SMUGGLED,
}


@pytest.mark.parametrize("data", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_ambiguous_framing_is_refused_closed_and_never_forwarded(start_balancer, backends, data):
    (b,) = await backends(1)
    lb = await start_balancer(f"""
        routes:
          - {{name: casino, match: {{host: casino.test}}, pool: web}}
        pools:
          web:
            backends: {pool_yaml([b])}
        """)
    reader, writer = await connect(lb)
    writer.write(data)
    response = await read_response(reader)
    assert response.status in (400, 501)
    assert_own_error(response, response.status)
    assert response.header("connection") == "close"
    assert await closed_after(reader)
    await asyncio.sleep(0.05)
    assert b.count() == 0  # neither the request nor anything smuggled in it reached the backend


async def test_a_bad_client_never_affects_another_clients_request(start_balancer, backends):
    (b,) = await backends(1)
    b.mode = "hang"
    b.hang_seconds = 0.5
    lb = await start_balancer(one_pool([b], top="limits: {header_timeout: 2s}"))
    good_reader, good_writer = await connect(lb)
    good_writer.write(b"POST /bet HTTP/1.1\r\nHost: casino.test\r\nContent-Length: 3\r\n\r\nbet")
    assert await eventually(lambda: b.count() == 1)

    # Meanwhile: a smuggling attempt, garbage, a half head that will never end.
    smuggler = await exchange(lb, BAD_REQUESTS["content-length with transfer-encoding"])
    assert smuggler.status == 400
    garbage = await lb.raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64), read_timeout=1)
    assert garbage.startswith(b"HTTP/1.1 400")
    _, loris = await connect(lb)
    loris.write(b"GET / HTTP/1.1\r\nHo")

    response = await read_response(good_reader)
    assert response.status == 200
    assert response.json()["body_bytes"] == 3
    assert b.count() == 1 and b.bodies == [b"bet"]
    loris.close()
    good_writer.close()


# -- 8. routing ----------------------------------------------------------------------------------


async def test_routes_match_host_wildcard_path_method_and_header_first_match_wins(start_balancer, backends):
    app_b, api_b, post_b, wild_b, static_b = await backends("app", "api", "post", "wild", "static")
    lb = await start_balancer(f"""
        routes:
          - {{name: app-clients, match: {{headers: {{X-Client: app}}}}, pool: app}}
          - {{name: api, match: {{host: api.example.com}}, pool: api}}
          - {{name: wallet-writes, match: {{host: wallet.example.com, methods: [POST, PUT]}}, pool: post}}
          - {{name: any-example, match: {{host: "*.example.com"}}, pool: wild}}
          - {{name: static, match: {{host: cdn.test, path_prefix: /static/}}, pool: static}}
          - {{name: pay-post-only, match: {{host: pay.test, methods: [POST]}}, pool: post}}
        pools:
          app: {{backends: {pool_yaml([app_b])}}}
          api: {{backends: {pool_yaml([api_b])}}}
          post: {{backends: {pool_yaml([post_b])}}}
          wild: {{backends: {pool_yaml([wild_b])}}}
          static: {{backends: {pool_yaml([static_b])}}}
        """)

    async def served_by(method: str, host: str, path: str = "/", extra: bytes = b"") -> str | None:
        body = b"x" if method in ("POST", "PUT") else b""
        length = b"Content-Length: %d\r\n" % len(body) if body else b""
        response = await exchange(lb, method.encode() + b" " + path.encode() + b" HTTP/1.1\r\nHost: "
                                  + host.encode() + b"\r\n" + length + extra + b"\r\n" + body)
        if response.status == 404:
            assert_own_error(response, 404)
            return None
        assert response.status == 200
        return response.json()["backend"]

    assert await served_by("GET", "api.example.com") == "api"
    assert await served_by("GET", "api.example.com:8443") == "api"  # the port is ignored
    assert await served_by("GET", "API.Example.COM") == "api"  # so is the case
    assert await served_by("GET", "a.example.com") == "wild"
    assert await served_by("GET", "example.com") is None  # "*.example.com" needs a label before it
    assert await served_by("POST", "wallet.example.com", "/withdraw") == "post"
    assert await served_by("GET", "wallet.example.com", "/balance") == "wild"  # falls through
    assert await served_by("GET", "cdn.test", "/static/logo.png") == "static"
    assert await served_by("GET", "cdn.test", "/lobby") is None
    assert await served_by("POST", "pay.test") == "post"
    assert await served_by("GET", "pay.test") is None  # unlisted method, no later route
    assert await served_by("GET", "api.example.com", extra=b"X-Client: app\r\n") == "app"  # first wins
    assert await served_by("GET", "api.example.com", extra=b"X-Client: web\r\n") == "api"
    assert (wild_b.count(), static_b.count()) == (2, 1)
