"""The strict request reader (balancer.http.parser): bytes in, events out, no sockets.

Covers docs/security.md (bad input: 400 and close where leniency would allow smuggling) and the
limits of docs/configuration.md (414 / 431 / 413), plus the framing facts the data plane relies on: bodies are
delivered decoded, pipelined requests come out one after another, and an upgrade stops the
reader at the offset where tunnel bytes start.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from balancer.config import Limits
from balancer.http.errors import RequestError
from balancer.http.parser import RequestHead, RequestReader, split_host


class Recorder:
    """A RequestEvents implementation that remembers what it was told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.heads: list[RequestHead] = []

    def request_started(self, head: RequestHead) -> None:
        self.heads.append(head)
        self.events.append(("start", head.method + b" " + head.target))

    def request_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def request_ended(self) -> None:
        self.events.append(("end", None))

    def body(self) -> bytes:
        return b"".join(data for kind, data in self.events if kind == "body")  # type: ignore[misc]


def read(data: bytes, limits: Limits = Limits(), *, bytewise: bool = False) -> Recorder:
    recorder = Recorder()
    reader = RequestReader(recorder, limits)
    if bytewise:
        for i in range(len(data)):
            reader.feed(data[i:i + 1])
    else:
        reader.feed(data)
    return recorder


def refused(data: bytes, limits: Limits = Limits()) -> tuple[RequestError, Recorder]:
    recorder = Recorder()
    reader = RequestReader(recorder, limits)
    with pytest.raises(RequestError) as info:
        reader.feed(data)
    return info.value, recorder


# -- well-formed requests ---------------------------------------------------------------------


@pytest.mark.parametrize("bytewise", [False, True])
def test_simple_get_is_read_into_a_head(bytewise: bool) -> None:
    rec = read(b"GET /lobby/tables?game=bj HTTP/1.1\r\nHost: Casino.Example.com:8080\r\n"
               b"X-Player: 42\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n", bytewise=bytewise)
    assert [kind for kind, _ in rec.events] == ["start", "end"]
    head = rec.heads[0]
    assert head.method == b"GET"
    assert head.target == b"/lobby/tables?game=bj"
    assert head.path == b"/lobby/tables"
    assert head.version == b"1.1"
    assert head.host == "casino.example.com"  # lower-case, port dropped: routing ignores it
    assert head.host_header == b"Casino.Example.com:8080"  # kept as sent for X-Forwarded-Host
    assert head.keep_alive
    assert head.cookie == b"a=1; b=2"
    # Names keep their spelling for forwarding, with a lower-case copy for lookups.
    assert (b"x-player", b"X-Player", b"42") in head.headers
    assert head.header(b"x-player") == b"42"


def test_content_length_body_is_delivered_whole_then_ended() -> None:
    body = b"x" * 5000
    rec = read(b"POST /bet HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + body)
    assert rec.events[0][0] == "start" and rec.events[-1][0] == "end"
    assert rec.heads[0].content_length == 5000 and not rec.heads[0].chunked
    assert rec.body() == body


def test_chunked_body_is_delivered_decoded_even_byte_by_byte() -> None:
    data = (b"POST /bet HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    for bytewise in (False, True):
        rec = read(data, bytewise=bytewise)
        assert rec.heads[0].chunked
        assert rec.body() == b"hello world"
        assert rec.events[-1] == ("end", None)


def test_pipelined_requests_come_out_in_order() -> None:
    data = (b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n")
    rec = read(data)
    assert rec.events == [
        ("start", b"GET /a"), ("end", None),
        ("start", b"POST /b"), ("body", b"abc"), ("end", None),
        ("start", b"GET /c"), ("end", None),
    ]


def test_http10_needs_no_host_and_is_not_keep_alive_by_default() -> None:
    rec = read(b"GET / HTTP/1.0\r\n\r\n")
    head = rec.heads[0]
    assert head.version == b"1.0" and head.host == "" and not head.keep_alive


@pytest.mark.parametrize("connection", [b"", b"Connection: keep-alive\r\n", b"Connection: close\r\n"])
def test_the_version_is_exact_whatever_the_connection_header(connection: bytes) -> None:
    # HTTP/1.0 may ask to be kept alive, 1.1 may ask to close: neither changes the version read.
    old = read(b"GET / HTTP/1.0\r\n" + connection + b"\r\n").heads[0]
    assert old.version == b"1.0"
    assert old.keep_alive == (connection == b"Connection: keep-alive\r\n")
    new = read(b"GET / HTTP/1.1\r\nHost: a\r\n" + connection + b"\r\n").heads[0]
    assert new.version == b"1.1"
    assert new.keep_alive == (connection != b"Connection: close\r\n")


@pytest.mark.parametrize("asking", [b"Connection", b"Proxy-Connection"])
@pytest.mark.parametrize("line", [b"GET / HTTP/2.0", b"GET / HTTP/0.9"])
def test_other_versions_are_refused_even_when_asking_for_keep_alive(line: bytes, asking: bytes) -> None:
    error, _ = refused(line + b"\r\nHost: a\r\n" + asking + b": keep-alive\r\n\r\n")
    assert error.status == 400


PROTOCOLS = [b"RTSP/1.0", b"RTSP/1.1", b"RTSP/2.0", b"ICE/1.0", b"HTTP/2.0", b"HTTP/0.9",
             b"HTTP/3.0", b"HTTPS/1.1", b"http/1.1"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("method", [b"GET", b"POST", b"OPTIONS", b"SOURCE", b"DESCRIBE"])
def test_only_http_10_and_11_request_lines_are_read(method: bytes, protocol: bytes) -> None:
    error, rec = refused(method + b" /game " + protocol + b"\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert error.status == 400 and error.close
    assert not rec.heads


@pytest.mark.parametrize("cut", range(1, 30))
def test_a_foreign_protocol_split_between_reads_is_still_seen(cut: int) -> None:
    data = b"GET /game RTSP/1.0\r\nHost: a\r\n\r\n"
    recorder = Recorder()
    reader = RequestReader(recorder, Limits())
    with pytest.raises(RequestError) as info:
        reader.feed(data[:cut])
        reader.feed(data[cut:])
    assert info.value.status == 400 and not recorder.heads


@pytest.mark.parametrize("pieces", [
    [b"GET / R", b"T", b"SP/1.0\r\nHost: a\r\n\r\n"],
    [b"GET / ", b"R", b"T", b"S", b"P", b"/1.0\r\nHost: a\r\n\r\n"],
    [b"OPTIONS http://a/ I", b"C", b"E/1.0\r\nHost: a\r\n\r\n"],
])
def test_a_foreign_protocol_cut_into_several_reads_is_still_seen(pieces: list[bytes]) -> None:
    recorder = Recorder()
    reader = RequestReader(recorder, Limits())
    with pytest.raises(RequestError) as info:
        for piece in pieces:
            reader.feed(piece)
    assert info.value.status == 400 and not recorder.heads


@pytest.mark.parametrize("bad_line", [b"Bad Header", b"X-A : 1", b" X-A: 1"])
@pytest.mark.parametrize("header", [
    b"Transfer-Encoding: gzip", b"Host: b", b"Expect: nothing", b"Content-Length: x",
])
def test_a_malformed_line_is_the_answer_whatever_header_came_before_it(header: bytes, bad_line: bytes) -> None:
    """The header before a malformed line is not looked at first (both builds hand a header
    over once the line after it is read): the answer is the malformed line's 400."""
    error, rec = refused(b"GET / HTTP/1.1\r\nHost: a\r\n" + header + b"\r\n" + bad_line + b"\r\n\r\n")
    assert (error.status, error.message.startswith("malformed request")) == (400, True)
    assert not rec.heads


def test_a_foreign_protocol_after_a_good_pipelined_request_is_refused() -> None:
    recorder = Recorder()
    reader = RequestReader(recorder, Limits())
    with pytest.raises(RequestError):
        reader.feed(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nRTSPGET /a RTSP/1.0\r\nHost: a\r\n\r\n")
    assert [h.target for h in recorder.heads] == [b"/a"]


def test_the_tokens_elsewhere_in_a_request_are_just_bytes() -> None:
    # The same tokens in a header value, a target or a body do not make a request foreign.
    rec = read(b"POST /RTSP/1.0 HTTP/1.1\r\nHost: a\r\nUser-Agent: ICE/1.0 RTSP/1.0\r\n"
               b"Content-Length: 8\r\n\r\nRTSP/1.0"
               b"GET /x HTTP/1.1\r\nHost: a\r\nX-P: GET / RTSP/1.0\r\n\r\n")
    assert [h.target for h in rec.heads] == [b"/RTSP/1.0", b"/x"]
    assert rec.body() == b"RTSP/1.0"


def test_proxy_connection_keep_alive_leaves_http10_as_it_is() -> None:
    # llhttp keeps an HTTP/1.0 request alive on Proxy-Connection too: still 1.0, no Host needed.
    head = read(b"GET / HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n").heads[0]
    assert head.version == b"1.0" and head.keep_alive
    error, _ = refused(b"POST / HTTP/1.0\r\nProxy-Connection: keep-alive\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert error.status == 400 and error.message == "Transfer-Encoding on HTTP/1.0"


def test_each_request_on_a_connection_has_its_host_checked() -> None:
    # The reader remembers the last Host it read: a different or empty one is still checked.
    recorder = Recorder()
    reader = RequestReader(recorder, Limits())
    reader.feed(b"GET / HTTP/1.1\r\nHost: Lobby.Casino.test:8443\r\n\r\n")
    reader.feed(b"GET / HTTP/1.1\r\nHost: Lobby.Casino.test:8443\r\n\r\n")
    reader.feed(b"GET / HTTP/1.1\r\nHost: slots.casino.test\r\n\r\n")
    assert [head.host for head in recorder.heads] == [
        "lobby.casino.test", "lobby.casino.test", "slots.casino.test"]
    for bad in (b"", b"a b"):
        for earlier in (b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"):  # fresh, and after a good one
            error, _ = refused(earlier + b"GET / HTTP/1.1\r\nHost: " + bad + b"\r\n\r\n")
            assert error.status == 400


def test_connection_close_ends_keep_alive_and_connection_values_are_joined() -> None:
    rec = read(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: X-Foo\r\n\r\n")
    head = rec.heads[0]
    assert not head.keep_alive
    assert head.connection == b"close,X-Foo"


def test_expect_100_continue_is_noted() -> None:
    rec = read(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
    assert rec.heads[0].expect_continue
    assert [kind for kind, _ in rec.events] == ["start"]  # body still to come


def test_absolute_form_target_for_a_host_becomes_origin_form() -> None:
    rec = read(b"GET http://Games.Example.com:81/x?y=1 HTTP/1.1\r\nHost: other\r\n\r\n")
    head = rec.heads[0]
    # RFC 9112 §3.2.2: the authority of an absolute-form target replaces Host.
    assert head.absolute
    assert head.target == b"/x?y=1" and head.path == b"/x"
    assert head.host == "games.example.com"
    assert [v for n, _, v in head.headers if n == b"host"] == [b"Games.Example.com:81"]


def test_websocket_upgrade_stops_at_the_tunnel_bytes() -> None:
    head = (b"GET /ws/table HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n")
    recorder = Recorder()
    offset = RequestReader(recorder, Limits()).feed(head + b"\x81\x05frame")
    assert offset == len(head)
    assert recorder.heads[0].upgrade == b"websocket"


def test_a_request_exactly_at_the_limits_is_accepted() -> None:
    limits = replace(Limits(), max_url_bytes=64, max_header_count=6, max_body_bytes=10)
    target = b"/" + b"u" * 63
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(4))  # + Host + Content-Length = 6
    rec = read(b"POST " + target + b" HTTP/1.1\r\nHost: a\r\n" + headers
               + b"Content-Length: 10\r\n\r\n0123456789", limits)
    assert rec.heads[0].target == target and rec.body() == b"0123456789"


# -- limits -----------------------------------------------------------------------------------


def test_url_over_max_url_bytes_is_414() -> None:
    error, rec = refused(b"GET /" + b"u" * 100 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
                         replace(Limits(), max_url_bytes=100))
    assert error.status == 414 and not rec.events


def test_url_over_the_limit_is_refused_before_the_line_ends() -> None:
    """A client must not make the reader hold an unbounded request line."""
    recorder = Recorder()
    reader = RequestReader(recorder, replace(Limits(), max_url_bytes=100))
    reader.feed(b"GET /" + b"u" * 50)
    with pytest.raises(RequestError) as info:
        reader.feed(b"u" * 60)
    assert info.value.status == 414


def test_header_bytes_over_max_header_bytes_is_431() -> None:
    error, rec = refused(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 2000 + b"\r\n\r\n",
                         replace(Limits(), max_header_bytes=1000))
    assert error.status == 431 and not rec.events


def test_a_head_trickled_past_max_header_bytes_is_431_before_it_ends() -> None:
    recorder = Recorder()
    reader = RequestReader(recorder, replace(Limits(), max_header_bytes=1000))
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
    with pytest.raises(RequestError) as info:
        for _ in range(20):
            reader.feed(b"v" * 100)  # one header value that never ends
    assert info.value.status == 431


def test_header_count_over_max_header_count_is_431() -> None:
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(10))
    error, rec = refused(b"GET / HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n",
                         replace(Limits(), max_header_count=10))
    assert error.status == 431 and not rec.events


def test_declared_body_over_max_body_bytes_is_413_before_any_event() -> None:
    error, rec = refused(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n",
                         replace(Limits(), max_body_bytes=1000))
    assert error.status == 413 and not rec.events


def test_chunked_body_streaming_over_max_body_bytes_is_413() -> None:
    recorder = Recorder()
    reader = RequestReader(recorder, replace(Limits(), max_body_bytes=1000))
    reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    reader.feed(b"258\r\n" + b"x" * 600 + b"\r\n")
    with pytest.raises(RequestError) as info:
        reader.feed(b"258\r\n" + b"x" * 600 + b"\r\n")
    assert info.value.status == 413
    assert ("end", None) not in recorder.events
    assert len(recorder.body()) <= 1000  # nothing past the limit was passed on


# -- strict framing (docs/security.md) -----------------------------------------------------------

SMUGGLING_AND_MALFORMED = {
    "content-length with transfer-encoding":
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding with content-length":
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "two different content-lengths":
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "repeated equal content-length":
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "content-length list":
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
    "content-length not a number":
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5a\r\n\r\nhello",
    "negative content-length":
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\nhello",
    "signed content-length":
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    "repeated transfer-encoding":
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding on http/1.0":
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "transfer_encoding look-alike":
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
    "content_length look-alike":
        b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\nhello",
    "missing host on http/1.1": b"GET / HTTP/1.1\r\n\r\n",
    "repeated host": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "host with a space": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "host with userinfo": b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "bare lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare cr in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
    "nul in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "control byte in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n",
    "space before the colon": b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
    "http/2.0 request line": b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    "http/0.9 request line": b"GET /\r\n\r\n",
    "asterisk target": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "absolute-form with userinfo": b"GET http://u@example.com/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "lower-case method": b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
    "non-websocket upgrade":
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    "upgrade with a body":
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 3\r\n\r\nabc",
}


@pytest.mark.parametrize("data", SMUGGLING_AND_MALFORMED.values(), ids=SMUGGLING_AND_MALFORMED.keys())
def test_malformed_or_ambiguous_requests_are_400_and_never_start(data: bytes) -> None:
    error, rec = refused(data)
    assert error.status == 400, error.message
    assert error.close  # framing can no longer be trusted: the connection must close
    # The owner never heard of a request, so nothing can have been forwarded.
    assert not [kind for kind, _ in rec.events if kind == "start"]


@pytest.mark.parametrize("coding", [b"gzip", b"xchunked", b"gzip, chunked", b"chunked, gzip", b"identity"])
def test_unsupported_transfer_codings_are_501(coding: bytes) -> None:
    data = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + coding + b"\r\n\r\n0\r\n\r\n"
    error, rec = refused(data)
    # RFC 9112 §6.1: a coding the server does not understand -> 501. Either way: closed, unsent.
    assert error.status in (400, 501) and error.close
    assert not rec.events


@pytest.mark.parametrize("method", [b"CONNECT", b"TRACE", b"PROPFIND"])
def test_methods_a_proxy_must_not_pass_are_refused(method: bytes) -> None:
    target = b"a:443" if method == b"CONNECT" else b"/"
    error, rec = refused(method + b" " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert error.status in (400, 501) and not rec.events


@pytest.mark.parametrize("chunks", [b"zz\r\nhello\r\n", b"5 \r\nhello\r\n", b"5\r\nhelloXX",
                                    b"-5\r\nhello\r\n", b"fffffffffffffffffff\r\n"])
def test_invalid_chunk_framing_is_400_and_the_request_never_ends(chunks: bytes) -> None:
    """The head was fine (the request started); the body framing is not: 400, never `end`."""
    recorder = Recorder()
    reader = RequestReader(recorder, Limits())
    with pytest.raises(RequestError) as info:
        reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
                    + b"0\r\n\r\n")
    assert info.value.status in (400, 413) and info.value.close
    assert ("end", None) not in recorder.events


def test_unknown_expectation_is_417() -> None:
    error, rec = refused(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: fast\r\nContent-Length: 1\r\n\r\nx")
    assert error.status == 417 and not rec.events


def test_a_smuggled_request_in_a_refused_body_is_never_seen() -> None:
    """CL.TE: a lenient reader would take `GET /admin` as a second request."""
    data = (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n")
    _, rec = refused(data)
    assert rec.events == []


# -- split_host ---------------------------------------------------------------------------


@pytest.mark.parametrize("value, host", [
    (b"Example.COM", "example.com"),
    (b"example.com:8443", "example.com"),
    (b"[::1]:8080", "::1"),
    (b"[2001:db8::1]", "2001:db8::1"),
])
def test_split_host_drops_port_and_case(value: bytes, host: str) -> None:
    assert split_host(value) == host


@pytest.mark.parametrize("value", [b"", b"a:b", b":80", b"a:80:90", b"[::1", b"[::1]x", b"a/b"])
def test_split_host_refuses_what_is_not_a_host(value: bytes) -> None:
    with pytest.raises(RequestError) as info:
        split_host(value)
    assert info.value.status == 400


GOOD_THEN_FOREIGN = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 2 + b"GET / RTSP/1.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + b"CONNECT / RTSP/1.0\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nRTSP/GET / ICE/1.0\r\nHost: a\r\n\r\n",
]


@pytest.mark.parametrize("data", GOOD_THEN_FOREIGN)
def test_where_the_reads_are_cut_never_changes_which_request_is_refused(data: bytes) -> None:
    # The good requests before the foreign line are read whole however the bytes are cut
    # (a token found in a later read was once taken for an earlier line's protocol).
    whole = Recorder()
    with pytest.raises(RequestError):
        RequestReader(whole, Limits()).feed(data)
    for cut in range(1, len(data)):
        recorder = Recorder()
        reader = RequestReader(recorder, Limits())
        with pytest.raises(RequestError) as info:
            reader.feed(data[:cut])
            reader.feed(data[cut:])
        assert info.value.status in (400, 501)
        assert [h.target for h in recorder.heads] == [h.target for h in whole.heads], cut


def test_a_protocol_token_in_a_header_value_is_only_bytes() -> None:
    data = b"GET /a HTTP/1.1\r\nHost: a\r\nX-Note: RTSP/1.0 and ICE/1.0\r\n\r\n"
    for cut in range(1, len(data)):
        recorder = Recorder()
        reader = RequestReader(recorder, Limits())
        reader.feed(data[:cut])
        reader.feed(data[cut:])
        assert [h.target for h in recorder.heads] == [b"/a"], cut
