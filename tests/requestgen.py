"""Hypothesis strategies for hostile HTTP/1.x request streams, and a reference framer.

The strategies build request streams out of pieces that matter for smuggling: framing
headers, odd separators and line endings, control bytes, chunked bodies (right and wrong),
pipelined requests, and plain random bytes.

`reference_frame` is a deliberately small, strict reading of RFC 9112 (request line, field
lines, Content-Length / chunked framing, trailers). It is the fuzz tests' second opinion: every
request the balancer's reader accepts must be framed identically by it, so that no split of
the stream lets the two disagree on where a request ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hypothesis import strategies as st

from balancer.config import Limits
from balancer.http.errors import RequestError
from balancer.http.parser import RequestHead, RequestReader

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# One or more spaces between the parts: RFC 9112 §3 lets a recipient split on whitespace runs,
# and llhttp does; the request line is never forwarded as received, so this is harmless.
# RTSP/ is read like HTTP/ (llhttp does, the balancer rebuilds the line; docs/security.md).
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") +([\x21-\x7e]+) +(?:HTTP|RTSP)/1\.([01])")
_FIELD_LINE = re.compile(rb"(" + _TOKEN + rb"):([\t\x20-\x7e\x80-\xff]*)")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(;[\t\x20-\x7e\x80-\xff]*)?")


@dataclass
class Framed:
    """One request as the reference framer reads it."""

    method: bytes
    target: bytes
    version: bytes
    fields: list[tuple[bytes, bytes]]  # (lower-case name, value without OWS), head then trailers
    body: bytes = b""
    complete: bool = False


@dataclass
class Reference:
    messages: list[Framed] = field(default_factory=list)
    invalid: str | None = None  # why the stream stopped making sense, if it did


def reference_frame(data: bytes) -> Reference:
    out = Reference()
    pos = 0
    while pos < len(data):
        # RFC 9112 §2.2: empty lines before a request line are ignored. llhttp skips any run
        # of CR and LF there, bare ones too; they are never forwarded, so that is harmless.
        while data[pos:pos + 1] in (b"\r", b"\n"):
            pos += 1
        if pos >= len(data):
            break
        pos = _frame_one(data, pos, out)
        if pos < 0:
            break
    return out


def _frame_one(data: bytes, pos: int, out: Reference) -> int:
    """Frame the request at `pos`; returns where the next one starts, or -1 to stop."""
    end = data.find(b"\r\n\r\n", pos)
    if end < 0:
        return -1  # head incomplete
    lines = data[pos:end].split(b"\r\n")
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None:
        out.invalid = f"request line {lines[0][:60]!r}"
        return -1
    fields = []
    for raw in lines[1:]:
        match = _FIELD_LINE.fullmatch(raw)
        if match is None:
            out.invalid = f"field line {raw[:60]!r}"
            return -1
        fields.append((match.group(1).lower(), match.group(2).strip(b" \t")))
    message = Framed(line.group(1), line.group(2), b"1." + line.group(3), fields)
    out.messages.append(message)
    te = [v for n, v in fields if n == b"transfer-encoding"]
    cl = [v for n, v in fields if n == b"content-length"]
    pos = end + 4
    if te:
        if cl or len(te) > 1 or te[0].lower() != b"chunked" or message.version != b"1.1":
            out.invalid = "framing"
            return -1
        return _chunked(data, pos, message, out)
    if cl:
        if len(cl) > 1 or not cl[0].isdigit():
            out.invalid = "content-length"
            return -1
        length = int(cl[0])
        if len(data) - pos < length:
            message.body = data[pos:]
            return -1
        message.body = data[pos:pos + length]
        pos += length
    message.complete = True
    return pos


def _chunked(data: bytes, pos: int, message: Framed, out: Reference) -> int:
    body: list[bytes] = []
    pos = _chunks(data, pos, body, out)
    message.body = b"".join(body)  # what was framed as body so far, even if the rest is bad
    if pos < 0:
        return -1
    while True:  # trailer section
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return -1
        if eol == pos:
            message.complete = True
            return pos + 2
        match = _FIELD_LINE.fullmatch(data[pos:eol])
        if match is None:
            out.invalid = "trailer line"
            return -1
        message.fields.append((match.group(1).lower(), match.group(2).strip(b" \t")))
        pos = eol + 2


def _chunks(data: bytes, pos: int, body: list[bytes], out: Reference) -> int:
    """Chunk data into `body` up to and including the last-chunk line; -1 if it ends first."""
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return -1
        line = _CHUNK_LINE.fullmatch(data[pos:eol])
        if line is None:
            out.invalid = f"chunk line {data[pos:eol][:40]!r}"
            return -1
        size = int(line.group(1), 16)
        pos = eol + 2
        if size == 0:
            return pos
        body.append(data[pos:pos + size])
        if len(data) - pos < size + 2:
            return -1
        if data[pos + size:pos + size + 2] != b"\r\n":
            out.invalid = "chunk data not followed by CRLF"
            return -1
        pos += size + 2


# -- what the balancer's reader reports ------------------------------------------------------


@dataclass
class Seen:
    head: RequestHead
    headers_at_start: list[tuple[bytes, bytes, bytes]]  # to tell whether the head changed after
    body: bytes = b""
    ended: bool = False


class Recorder:
    """A RequestEvents sink that keeps everything the reader reports."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []

    def request_started(self, head: RequestHead) -> None:
        self.requests.append(Seen(head, list(head.headers)))

    def request_body(self, data: bytes) -> None:
        self.requests[-1].body += data

    def request_ended(self) -> None:
        self.requests[-1].ended = True


class Outcome:
    """What the reader made of a stream: the requests it reported, and how it stopped."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.error: RequestError | None = None
        self.upgraded = False

    def summary(self) -> tuple:
        requests = tuple((r.head.method, r.head.target, r.head.version, tuple(r.head.headers),
                          r.body, r.ended) for r in self.recorder.requests)
        return requests, self.error.status if self.error else None, self.upgraded


def run(pieces: list[bytes]) -> Outcome:
    """Feed pieces as the client connection does: stop at the first refusal or upgrade."""
    outcome = Outcome()
    reader = RequestReader(outcome.recorder, Limits())  # inputs stay far below the limits
    for piece in pieces:
        try:
            offset = reader.feed(piece)
        except RequestError as exc:
            outcome.error = exc
            break
        if offset is not None:
            outcome.upgraded = True
            break
    return outcome


# -- strategies -------------------------------------------------------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a.example\r\n\r\n"

GOOD_METHODS = [b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH"]
GOOD_TARGETS = [b"/", b"/lobby?table=7", b"/ws/room", b"http://games.example.com/x"]
GOOD_FIELDS = [(b"X-Game", b"roulette"), (b"Cookie", b"LB=abc; s=1"), (b"Connection", b"keep-alive"),
               (b"X-Forwarded-For", b"10.0.0.1"), (b"X-Request-Id", b"req-1"), (b"Accept", b"*/*"),
               (b"User-Agent", b"fuzz/1.0 (\xe4)"), (b"Connection", b"close")]
BAD_METHODS = [b"CONNECT", b"TRACE", b"PRI", b"SOURCE", b"FOO", b"get", b"G(T", b"", b"GET GET"]
BAD_TARGETS = [b"*", b"http://evil.example/", b"http://a@games.example.com/", b"//evil.example/",
               b"/%00", b"/a#frag", b"", b"/\x01", b"/\xff", b"/a b", b"http://[::1/"]
BAD_VERSIONS = [b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.2", b"RTSP/1.0", b"RTSP/1.1", b"ICE/1.0",
                b"http/1.1", b"HTTP/1.1 ", b"HTTP/1.10", b""]
NAMES = [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade", b"Expect",
         b"HTTP2-Settings", b"Trailer", b"TE", b"Transfer_Encoding", b"Content_Length",
         b"Content-Length ", b" Host", b"Ho\x00st", b"X-\xffGame", b"", b"X-Game"]
VALUES = [b"a.example", b"games.example.com", b"evil.example", b"a.example:8080", b"[::1]:80",
          b"5", b"0", b"00", b"-1", b"+5", b"0x5", b"5, 5", b"5 5", b" 5 ", b"99999999999999999999",
          b"chunked", b"Chunked", b" chunked", b"chunked, identity", b"gzip, chunked", b"identity",
          b"xchunked", b"close", b"keep-alive", b"Upgrade", b"upgrade, http2-settings",
          b"websocket", b"h2c", b"100-continue", b"a\x00b", b"a\rb", b"a\nb", b"\x0bchunked",
          b"\xff\xfe", b""]
BAD_EOLS = [b"\n", b"\r", b"\r\r\n", b" \r\n", b"\r\n ", b"\r\n\t"]
BAD_COLONS = [b":", b" : ", b":\t", b": \r\n ", b"", b"::"]
BAD_CHUNK_SIZES = [b"%x;ext\n", b"%x ", b" %x", b"+%x", b"0x%x", b"-%x", b"fffffffffffffffff%x", b"z%x", b""]
BAD_TRAILERS = [b"Content-Length: 5\r\n", b"Host: evil.example\r\n", b"Transfer-Encoding: chunked\r\n",
                b"X-Sum: 1\n", b"X-Sum : 1\r\n"]
MUTATIONS = ["method", "separator", "target", "version", "field", "framing", "host", "colon",
             "eol", "chunk", "trailer", "length", "extra"]


@st.composite
def chunked_body(draw: st.DrawFn, damage: bool = False) -> bytes:
    """A chunked body; with `damage`, one chunk size line or the trailer is wrong."""
    pieces = draw(st.lists(st.binary(min_size=1, max_size=12) | st.just(SMUGGLED), max_size=3))
    sizes = [b"%x" % len(p) if draw(st.booleans()) else b"%X;x=1" % len(p) for p in pieces] + [b"0"]
    trailer = draw(st.sampled_from([b"", b"X-Sum: 1\r\n"]))
    if damage and draw(st.booleans()):
        index = draw(st.integers(0, len(sizes) - 1))
        sizes[index] = draw(st.sampled_from(BAD_CHUNK_SIZES)).replace(b"%x", sizes[index])
    elif damage:
        trailer = draw(st.sampled_from(BAD_TRAILERS))
    out = [size + b"\r\n" + piece + b"\r\n" for size, piece in zip(sizes, pieces)]
    return b"".join(out) + sizes[-1] + b"\r\n" + trailer + b"\r\n"


@st.composite
def request(draw: st.DrawFn) -> bytes:
    """One request: well-formed, then zero to two hostile mutations, each in one place."""
    version = draw(st.sampled_from([b"HTTP/1.1"] * 4 + [b"HTTP/1.0"]))
    method = draw(st.sampled_from(GOOD_METHODS))
    separator = b" "
    target = draw(st.sampled_from(GOOD_TARGETS))
    fields: list[list[bytes]] = [[b"Host", b": ", b"a.example"]] if version == b"HTTP/1.1" or draw(st.booleans()) else []
    fields += [[n, b": ", v] for n, v in draw(st.lists(st.sampled_from(GOOD_FIELDS), max_size=3))]
    payload = draw(st.binary(max_size=16) | st.just(SMUGGLED))
    framing = draw(st.sampled_from(["none", "length", "chunked", "upgrade"] if version == b"HTTP/1.1"
                                   else ["none", "length"]))
    body = b""
    if framing == "upgrade":
        fields += [[b"Connection", b": ", b"Upgrade"], [b"Upgrade", b": ", b"websocket"]]
        body = payload  # what follows an upgrade head belongs to the new protocol
    elif framing == "length":
        fields.append([b"Content-Length", b": ", b"%d" % len(payload)])
        body = payload
    elif framing == "chunked":
        fields.append([b"Transfer-Encoding", b": ", b"chunked"])
        body = draw(chunked_body())
    fields = draw(st.permutations(fields))
    eols = [b"\r\n"] * (len(fields) + 2)
    for kind in draw(st.lists(st.sampled_from(MUTATIONS), max_size=2)):
        if kind == "method":
            method = draw(st.sampled_from(BAD_METHODS))
        elif kind == "separator":
            separator = draw(st.sampled_from([b"  ", b"\t", b""]))
        elif kind == "target":
            target = draw(st.sampled_from(BAD_TARGETS))
        elif kind == "version":
            version = draw(st.sampled_from(BAD_VERSIONS))
        elif kind in ("field", "framing", "host"):
            name = {"field": st.sampled_from(NAMES),
                    "framing": st.sampled_from([b"Content-Length", b"Transfer-Encoding"]),
                    "host": st.just(b"Host")}[kind]
            value = st.sampled_from(VALUES) | st.binary(max_size=6)
            fields.insert(draw(st.integers(0, len(fields))), [draw(name), b": ", draw(value)])
            eols.append(b"\r\n")
        elif kind == "colon" and fields:
            fields[draw(st.integers(0, len(fields) - 1))][1] = draw(st.sampled_from(BAD_COLONS))
        elif kind == "eol":
            eols[draw(st.integers(0, len(eols) - 1))] = draw(st.sampled_from(BAD_EOLS))
        elif kind in ("chunk", "trailer") and framing == "chunked":
            body = draw(chunked_body(damage=True))
        elif kind == "length":
            body = body[:-1] if body and draw(st.booleans()) else body + b"x"
        elif kind == "extra":
            body += draw(st.sampled_from([SMUGGLED, b"\r\n", b"0\r\n\r\n", b"\n"]))
    lines = [method + separator + target + b" " + version] + [b"".join(f) for f in fields] + [b""]
    return b"".join(line + eol for line, eol in zip(lines, eols)) + body


def streams() -> st.SearchStrategy[bytes]:
    """A connection's worth of bytes: one to three requests back to back, or noise."""
    pipelined = st.lists(request(), min_size=1, max_size=3).map(b"".join)
    return st.one_of(pipelined, pipelined, pipelined, st.binary(max_size=64))


def splits(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """`data` cut into pieces at random places (how packets may arrive)."""
    return st.lists(st.integers(0, len(data)), max_size=6).map(
        lambda cuts: [data[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)]) if b > a])
