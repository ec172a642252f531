"""The HTTP/2 attacks refused (docs/security.md "HTTP/2"): each sent as raw frames by a Python
client; the answer is the RFC's error (RST_STREAM or GOAWAY with its code), and another player
on the same listener is served meanwhile."""

from __future__ import annotations

import hpack
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame, PriorityFrame,
    RstStreamFrame, SettingsFrame, WindowUpdateFrame,
)

from balancer.http.http2 import FLOOD_ALLOWANCE, RESET_ALLOWANCE
from tests.conftest import pool_yaml
from tests.fakes.h2client import H2Client, RawH2


@pytest.fixture
async def lb(start_balancer, backends):
    bs = await backends(1)
    running = await start_balancer(f"""
        limits: {{max_concurrent_streams: 10, max_header_bytes: 4096, client_idle_timeout: 1s}}
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            backends: {pool_yaml(bs)}
        """, listeners="listeners:\n  - name: h2c\n    address: 127.0.0.1:0\n    http2: true\n")
    running.backend = bs[0]
    return running


async def others_served(lb) -> None:
    """Another player, on a connection of their own, is answered."""
    client = await H2Client.open(lb.port())
    try:
        response = await client.request("GET", "/other")
        assert response.status == 200
    finally:
        client.close()


async def goaway_after(raw: RawH2) -> GoAwayFrame:
    frame = await raw.wait_for(GoAwayFrame)
    assert frame is not None, "the connection closed without GOAWAY"
    return frame


async def test_rapid_reset_is_cut_off(lb):
    """CVE-2023-44487: HEADERS then RST_STREAM, over and over, costs the attacker the connection."""
    raw = await RawH2.open(lb.port())
    stream_id = 1
    for _ in range(RESET_ALLOWANCE * 3):
        reset = RstStreamFrame(stream_id)
        reset.error_code = ErrorCodes.CANCEL
        raw.send(raw.headers(stream_id, RawH2.get(stream_id, "/slow")), reset)
        stream_id += 2
    frame = await goaway_after(raw)
    assert frame.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert frame.last_stream_id < stream_id
    await raw.until_closed()
    await others_served(lb)


async def test_continuation_flood_is_refused(lb):
    raw = await RawH2.open(lb.port())
    block = raw.header_block(RawH2.get(1))
    head = HeadersFrame(1)
    head.data = block[:3]
    raw.send(head)
    for _ in range(10000):
        more = ContinuationFrame(1)
        more.data = b"\x00"  # never END_HEADERS
        raw.send(more)
    frame = await goaway_after(raw)
    assert frame.error_code in (ErrorCodes.PROTOCOL_ERROR, ErrorCodes.ENHANCE_YOUR_CALM,
                                ErrorCodes.COMPRESSION_ERROR)
    await raw.until_closed()
    await others_served(lb)


async def test_hpack_bomb_is_refused(lb):
    """One big header in the dynamic table, then a block naming it a thousand times: a few
    KiB on the wire, megabytes decoded. Decoding stops at the limit."""
    raw = await RawH2.open(lb.port())
    encoder = hpack.Encoder()
    first = encoder.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.example"),
                            (b":path", b"/"), (b"x-big", b"y" * 3000)])
    frame = HeadersFrame(1)
    frame.data = first
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    raw.send(frame)
    # Indexed header field 62 (the newest dynamic entry: x-big), repeated.
    bomb = encoder.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.example"),
                           (b":path", b"/")]) + bytes([0x80 | 62]) * 1000
    frame = HeadersFrame(3)
    frame.data = bomb
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    raw.send(frame)
    goaway = await goaway_after(raw)
    assert goaway.error_code in (ErrorCodes.ENHANCE_YOUR_CALM, ErrorCodes.COMPRESSION_ERROR)
    await raw.until_closed()
    await others_served(lb)


async def test_header_list_over_limit_gets_431_on_its_stream(lb):
    client = await H2Client.open(lb.port())
    try:
        r = await client.request("GET", "/", [("x-long", "z" * 5000)])
        assert r.status == 431
        assert (await client.request("GET", "/")).status == 200  # the connection lives on
    finally:
        client.close()


@pytest.mark.parametrize("flood", ["ping", "settings", "priority", "empty-data", "window-update"])
async def test_control_frame_floods_are_cut_off(lb, flood):
    raw = await RawH2.open(lb.port())
    if flood == "empty-data":
        raw.send(raw.headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "a.example"),
                                 (":path", "/")], end_stream=False))
    frames = []
    for n in range(FLOOD_ALLOWANCE * 2 + 100):
        if flood == "ping":
            frame = PingFrame(0)
            frame.opaque_data = n.to_bytes(8, "big")
        elif flood == "settings":
            frame = SettingsFrame(0)
            frame.settings = {SettingsFrame.INITIAL_WINDOW_SIZE: 65535}
        elif flood == "priority":
            frame = PriorityFrame(1001 + 2 * n)
            frame.depends_on = 0
            frame.stream_weight = 16
        elif flood == "window-update":
            frame = WindowUpdateFrame(0)
            frame.window_increment = 1
        else:
            frame = DataFrame(1)
            frame.data = b""
        frames.append(frame.serialize())
    raw.send(b"".join(frames))
    frame = await goaway_after(raw)
    assert frame.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    await raw.until_closed()
    await others_served(lb)


async def test_too_many_concurrent_streams(lb):
    """Past max_concurrent_streams (10 here) a stream is refused on its own, RST_STREAM
    REFUSED_STREAM (RFC 9113 §5.1.2: the client may send it again); the ten open streams are
    answered and the connection goes on."""
    lb.backend.mode = "hang"
    lb.backend.hang_seconds = 1.0
    raw = await RawH2.open(lb.port())
    for n in range(12):
        raw.send(raw.headers(1 + 2 * n, RawH2.get(1 + 2 * n, "/slow")))
    for refused in (21, 23):
        frame = await raw.wait_for(RstStreamFrame, stream_id=refused)
        assert frame is not None and frame.error_code == ErrorCodes.REFUSED_STREAM
    for answered in range(1, 20, 2):
        head = await raw.wait_for(HeadersFrame, stream_id=answered)
        assert head is not None
    assert raw.goaway() is None
    assert lb.backend.count() == 10
    lb.backend.mode = "ok"
    raw.send(raw.headers(25, RawH2.get(25, "/again")))
    assert await raw.wait_for(HeadersFrame, stream_id=25) is not None
    raw.close()
    await others_served(lb)


async def test_window_never_opened_is_cancelled(lb):
    """A player announcing a zero window holds its stream's answer and the backend behind it:
    after client_idle_timeout (1 s here) the stream is cancelled and the backend let go."""
    raw = await RawH2.open(lb.port(), settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    raw.send(raw.headers(1, RawH2.get(1, "/stream/1000000")))
    frame = await raw.wait_for(RstStreamFrame, stream_id=1)
    assert frame is not None and frame.error_code == ErrorCodes.CANCEL
    assert not any(isinstance(f, DataFrame) and f.stream_id == 1 and f.data for f in raw.frames)
    raw.close()
    await others_served(lb)


@pytest.mark.parametrize("case", ["connection-header", "content-length-mismatch", "uppercase-name",
                                  "missing-path", "te-not-trailers"])
async def test_malformed_request_is_a_stream_error(lb, case):
    """A malformed request (RFC 9113 §8.1.1) is reset on its own stream, RST_STREAM
    PROTOCOL_ERROR; nothing reaches a backend, and the connection serves the next stream."""
    raw = await RawH2.open(lb.port())
    if case == "connection-header":
        raw.send(raw.headers(1, RawH2.get(1) + [("connection", "keep-alive")]))
    elif case == "content-length-mismatch":
        lb.backend.mode = "hang"  # the request is on its way when its body turns out short
        raw.send(raw.headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "a.example"),
                                 (":path", "/"), ("content-length", "10")], end_stream=False))
        frame = DataFrame(1)
        frame.data = b"abc"
        frame.flags.add("END_STREAM")
        raw.send(frame)
    elif case == "uppercase-name":
        raw.send(raw.headers(1, RawH2.get(1) + [("X-Upper", "1")]))
    elif case == "missing-path":
        raw.send(raw.headers(1, [(":method", "GET"), (":scheme", "http"), (":authority", "a.example")]))
    elif case == "te-not-trailers":
        raw.send(raw.headers(1, RawH2.get(1) + [("te", "gzip")]))
    frame = await raw.wait_for(RstStreamFrame, stream_id=1)
    assert frame is not None and frame.error_code == ErrorCodes.PROTOCOL_ERROR
    assert not any(isinstance(f, HeadersFrame) and f.stream_id == 1 for f in raw.frames)
    lb.backend.mode = "ok"
    raw.send(raw.headers(3, RawH2.get(3, "/next")))
    head = await raw.wait_for(HeadersFrame, stream_id=3)
    assert head is not None and dict(raw.decoder.decode(head.data, raw=True))[b":status"] == b"200"
    assert raw.goaway() is None
    assert lb.backend.count("GET", "/next") == 1
    raw.close()
    await others_served(lb)


@pytest.mark.parametrize("case", ["data-on-stream-0", "headers-on-even-stream", "data-on-idle-stream",
                                  "window-update-zero"])
async def test_invalid_frames_and_states(lb, case):
    """Frames no state allows are connection errors (RFC 9113 §5.4.1): GOAWAY PROTOCOL_ERROR."""
    raw = await RawH2.open(lb.port())
    expect = ErrorCodes.PROTOCOL_ERROR
    if case == "data-on-stream-0":
        raw.send(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA, 1 byte, stream 0 (hyperframe refuses to)
    elif case == "headers-on-even-stream":
        raw.send(raw.headers(2, RawH2.get(2)))
    elif case == "data-on-idle-stream":
        frame = DataFrame(7)
        frame.data = b"x"
        raw.send(frame)
    elif case == "window-update-zero":
        frame = WindowUpdateFrame(0)
        frame.window_increment = 0
        raw.send(frame)
    frames = await raw.until_closed()
    codes = {f.error_code for f in frames if isinstance(f, (GoAwayFrame, RstStreamFrame))}
    assert expect in codes or ErrorCodes.STREAM_CLOSED in codes, frames
    assert lb.backend.count() == 0  # nothing malformed reached the backend
    await others_served(lb)
