"""Slow and stalling clients: slowloris heads, trickled bodies, idle keep-alive, and a client
that never reads its answer. Each must cost the balancer bounded time and memory.
"""

from __future__ import annotations

import asyncio
import socket

from tests.conftest import one_pool
from tests.fakes.h2client import H2Client
from tests.httpcheck import parse_responses, read_until_close
from tests.waiting import HANG_GUARD


async def start(start_balancer, backends, limits: str):
    (backend,) = await backends(1)
    lb = await start_balancer(one_pool([backend], top=f"limits: {limits}"))
    return lb, backend


async def trickle(writer: asyncio.StreamWriter, pieces: list[bytes], pause: float) -> None:
    """Send pieces `pause` apart until done or the balancer hangs up."""
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(pause)
    except ConnectionError:
        pass


async def test_slowloris_head_gets_408_at_header_timeout(start_balancer, backends):
    lb, backend = await start(start_balancer, backends, "{header_timeout: 300ms}")
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    loop = asyncio.get_running_loop()
    began = loop.time()
    # One header line every 50 ms for 10 s: a timer re-armed per packet would not fire before
    # the trickle ends.
    sender = asyncio.create_task(trickle(
        writer, [b"GET / HTTP/1.1\r\nHost: a.example\r\n"] + [b"X-Slow-%d: a\r\n" % i for i in range(200)], 0.05))
    raw = await read_until_close(reader, writer, timeout=20.0)
    elapsed = loop.time() - began
    sender.cancel()
    assert [a.status for a in parse_responses(raw.data)] == [408]
    assert raw.closed
    assert elapsed < 8.0, "the head timeout must not be re-armed by each trickled byte"
    assert backend.count() == 0


async def test_silent_connection_is_closed_at_header_timeout(start_balancer, backends):
    lb, _ = await start(start_balancer, backends, "{header_timeout: 200ms}")
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    raw = await read_until_close(reader, writer, timeout=3.0)
    assert raw.closed
    assert raw.data == b""  # nothing was asked, so nothing is answered


async def test_trickled_body_below_min_body_rate_gets_408(start_balancer, backends):
    lb, backend = await start(start_balancer, backends, "{min_body_rate: 1000, header_timeout: 5s}")
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    writer.write(b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 100000\r\n\r\n")
    # 10 bytes every 50 ms is 200 bytes/s, far below 1000.
    sender = asyncio.create_task(trickle(writer, [b"x" * 10] * 200, 0.05))
    raw = await read_until_close(reader, writer, timeout=5.0)
    sender.cancel()
    assert [a.status for a in parse_responses(raw.data)] == [408]
    assert raw.closed
    assert backend.count("POST", "/upload") == 1  # the head went on; the body never completed
    assert backend.bodies == []


async def test_body_above_min_body_rate_is_served(start_balancer, backends):
    lb, backend = await start(start_balancer, backends, "{min_body_rate: 1000, header_timeout: 5s}")
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    writer.write(b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4000\r\nConnection: close\r\n\r\n")
    # 400 bytes every 100 ms: about 4000 bytes/s, for one second, past the grace period.
    await trickle(writer, [b"y" * 400] * 10, 0.1)
    raw = await read_until_close(reader, writer, timeout=5.0)
    assert [a.status for a in parse_responses(raw.data)] == [200]
    assert backend.bodies == [b"y" * 4000]


async def test_chunked_body_below_min_body_rate_gets_408(start_balancer, backends):
    lb, backend = await start(start_balancer, backends, "{min_body_rate: 1000, header_timeout: 5s}")
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    writer.write(b"POST /upload HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n")
    # Chunk framing without data is no progress: only body bytes count.
    sender = asyncio.create_task(trickle(writer, [b"1;pad=" + b"p" * 200 + b"\r\nx\r\n"] * 100, 0.05))
    raw = await read_until_close(reader, writer, timeout=5.0)
    sender.cancel()
    assert [a.status for a in parse_responses(raw.data)] == [408]
    assert raw.closed


async def test_idle_keep_alive_connection_is_closed_at_client_idle_timeout(start_balancer, backends):
    lb, backend = await start(start_balancer, backends, "{client_idle_timeout: 300ms, header_timeout: 5s}")
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    writer.write(b"GET /first HTTP/1.1\r\nHost: a.example\r\n\r\n")
    raw = await read_until_close(reader, writer, timeout=5.0)
    (answer,) = parse_responses(raw.data)
    assert answer.status == 200 and not answer.closes  # kept alive at first...
    assert raw.closed  # ...then closed quietly once idle, without a second answer
    assert await _connections_gone(lb)


async def _connections_gone(lb, within: float = 3.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while loop.time() < end:
        if not lb.app.listeners["public"].connections:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_keep_alive_connection_in_use_outlives_the_idle_timeout(start_balancer, backends):
    """The idle timer runs only between requests: a client that keeps asking stays connected."""
    # Pauses of 300 ms against a 1 s idle timeout: a loop starved for 0.7 s would still keep it.
    lb, backend = await start(start_balancer, backends, "{client_idle_timeout: 1s, header_timeout: 5s}")
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    for i in range(6):  # 6 x 300 ms: nearly twice the idle timeout in total
        writer.write(b"GET /again HTTP/1.1\r\nHost: a.example\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG_GUARD)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        await asyncio.sleep(0.3)
    writer.close()
    assert backend.count("GET", "/again") == 6


async def test_client_that_never_reads_cannot_make_the_balancer_buffer(start_balancer, backends):
    lb, backend = await start(start_balancer, backends, "{header_timeout: 5s}")
    size = 32 * 1024 * 1024  # more than every socket buffer on the way can hold
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", lb.port()))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.transport.pause_reading()  # read nothing at all for now
    writer.write(b"GET /stream/%d HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n" % size)
    await writer.drain()
    (conn,) = await _one_connection(lb)
    largest = 0
    for _ in range(16):  # 0.8 s of a backend that can send much faster than that
        await asyncio.sleep(0.05)
        largest = max(largest, conn.transport.get_write_buffer_size())
    # Without backpressure the balancer would hold most of the 32 MiB here.
    assert largest < 1024 * 1024, largest
    assert conn.exchange is not None and conn.exchange.upstream is not None
    assert conn.exchange.upstream.transport.is_reading() is False  # the backend is paused
    writer.transport.resume_reading()
    raw = await read_until_close(reader, writer, timeout=5.0)
    (answer,) = parse_responses(raw.data)
    assert answer.status == 200
    assert len(answer.body) == size  # paused, not cut: every byte arrives in the end


async def _one_connection(lb, within: float = 2.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while loop.time() < end:
        conns = lb.app.listeners["public"].connections
        if conns and next(iter(conns)).exchange is not None:
            return list(conns)
        await asyncio.sleep(0.01)
    raise AssertionError("the balancer never took the request")


async def test_expect_continue_client_may_wait_before_its_body(start_balancer, backends):
    """A client that sent `Expect: 100-continue` may hold its body until it hears back; that
    wait is not a slow body."""
    lb, backend = await start(start_balancer, backends, "{min_body_rate: 1000, header_timeout: 5s}")
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    writer.write(b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3000\r\n"
                 b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
    await asyncio.sleep(1.7)  # past the grace and the first check, not one body byte yet
    writer.write(b"z" * 3000)
    raw = await read_until_close(reader, writer, timeout=5.0)
    statuses = [a.status for a in parse_responses(raw.data)]
    assert statuses[-1] == 200, statuses
    assert backend.bodies == [b"z" * 3000]


async def test_client_that_never_reads_is_cut_off_after_the_response_timeout(start_balancer, backends):
    """Backpressure bounds memory; `timeouts.response` bounds time: with the backend paused,
    no byte moves, and the exchange is given up after that long without progress."""
    (backend,) = await backends(1)
    lb = await start_balancer(one_pool([backend], pool_extra="timeouts: {response: 500ms}"))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", lb.port()))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.transport.pause_reading()
    writer.write(b"GET /stream/%d HTTP/1.1\r\nHost: a.example\r\n\r\n" % (32 * 1024 * 1024))
    await writer.drain()
    (conn,) = await _one_connection(lb)
    loop = asyncio.get_running_loop()
    end = loop.time() + 5.0
    while not conn.closed and loop.time() < end:
        await asyncio.sleep(0.05)
    assert conn.closed, "a client that reads nothing must not hold its connection for ever"
    writer.transport.resume_reading()
    raw = await read_until_close(reader, writer, timeout=5.0)
    assert raw.closed
    assert len(raw.data) < 32 * 1024 * 1024  # cut off, not completed


async def test_trickled_body_on_an_http2_stream_gets_408_and_other_streams_go_on(start_balancer, backends):
    """limits.min_body_rate per HTTP/2 stream: a stream whose body trickles gets 408 on its own
    (and RST_STREAM NO_ERROR: the rest is not wanted); a brisk upload on the same connection
    is served, and the connection stays open."""
    (backend,) = await backends(1)
    lb = await start_balancer(one_pool([backend], top="limits: {min_body_rate: 1000, header_timeout: 5s}"),
                              listeners="listeners:\n  - name: h2c\n    address: 127.0.0.1:0\n    http2: true\n")
    player = await H2Client.open(lb.port("h2c"))
    try:
        slow = player.start("POST", "/upload", [("content-length", "100000")], end=False)
        brisk = player.start("POST", "/upload", [("content-length", "4000")], end=False)
        answer = player.responses[slow]
        for piece in range(200):  # 10 bytes every 50 ms: 200 bytes/s, far below 1000
            if answer.ended or answer.reset is not None or player.closed:
                break
            player.send_data(slow, b"x" * 10)
            if piece < 10:  # 400 bytes every 50 ms: 8000 bytes/s
                player.send_data(brisk, b"y" * 400, end=piece == 9)
            await asyncio.sleep(0.05)
        await player.until(lambda: answer.ended or answer.reset is not None)
        assert answer.status == 408
        served = player.responses[brisk]
        await player.until(lambda: served.ended)
        assert served.status == 200
        assert backend.bodies == [b"y" * 4000]
        assert not player.closed and player.goaway is None
        assert (await player.request("GET", "/after")).status == 200
    finally:
        player.close()
