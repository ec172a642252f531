"""Strict request framing on httptools (llhttp), sans-IO: bytes in, events out.

llhttp in strict mode already refuses Content-Length with Transfer-Encoding, bad or repeated
Content-Length, obs-fold, bare CR/LF, NUL and control bytes and bad chunk lines. What it lets
through and a proxy must refuse itself (each a way to smuggle a request past the balancer or
to make it an open proxy) is checked here: Host missing or repeated, versions other than
HTTP/1.0 and 1.1, Transfer-Encoding other than a single `chunked`, Transfer-Encoding on
HTTP/1.0, look-alike names such as `Transfer_Encoding`, CONNECT and unknown methods, and the
URL, header size and header count limits. RFC 9112 §6.3 and §11.2 give the reasons.
"""

from __future__ import annotations

import sys
from typing import Protocol

import httptools

from ..compiled import COMPILED, fields
from ..config import Limits
from .errors import RequestError
from .headers import HeaderNames, length_bits
from .methods import METHODS

if COMPILED:  # the same llhttp, its events delivered as C calls (llhttp_parser.pyx)
    from .llhttp_request import RequestParser as _RequestParser
else:
    from httptools import HttpRequestParser as _RequestParser

# The method as one shared object per name: its hash is computed once, not per request
# (method sets, retry rules and the request counters all look it up).
_METHODS: dict[bytes, bytes] = METHODS

# Names a lenient backend might normalise into a framing header ("Transfer_Encoding"). A
# look-alike is as long as what it imitates: other lengths need no closer look.
_FRAMING_LOOKALIKES = frozenset({b"transfer-encoding", b"content-length"})
_LOOKALIKE_LENGTHS = frozenset(len(name) for name in _FRAMING_LOOKALIKES)
_HOST_CHARS = b"abcdefghijklmnopqrstuvwxyz0123456789.-_:[]"
# The headers on_header looks at; every other header costs one set lookup.
_SPECIAL_HEADERS = frozenset({
    b"host", b"transfer-encoding", b"content-length", b"connection", b"upgrade", b"expect",
    b"x-forwarded-for", b"x-request-id", b"cookie", b"proxy-connection",
})
# The framing names are special, so their look-alikes' lengths are among these.
_SPECIAL_LENGTHS = length_bits(_SPECIAL_HEADERS)


class RequestHead:
    """What the balancer knows about a request once its head is read."""

    __slots__ = fields(__name__, "RequestHead")  # its .pxd declares them

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.path = b""  # target without the query
        self.version = b"1.1"
        # (lower-case name, name as sent, value), in order
        self.headers: list[tuple[bytes, bytes, bytes]] = []
        self.host = ""  # lower-case, without port; "" when absent (HTTP/1.0)
        self.host_header: bytes | None = None
        self.keep_alive = True
        self.chunked = False
        self.content_length: int | None = None
        self.upgrade: bytes | None = None  # lower-case protocol when this is an upgrade
        self.expect_continue = False
        self.connection: bytes | None = None
        self.forwarded_for: bytes | None = None
        self.request_id: bytes | None = None
        self.cookie: bytes | None = None
        self.absolute = False  # the target was absolute-form (http://host/path)
        self.size = 0  # bytes of the head as sent (request line, header lines, blank line)

    def header(self, lname: bytes) -> bytes | None:
        for name, _, value in self.headers:
            if name == lname:
                return value
        return None

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class RequestEvents(Protocol):
    """What the reader tells its owner (the client connection)."""

    def request_started(self, head: RequestHead) -> None: ...
    def request_body(self, data: bytes) -> None: ...
    def request_ended(self) -> None: ...


# Players send the same few Host values over and over: each is checked once (bounded cache).
_HOSTS: dict[bytes, str] = {}
_HOSTS_MAX = 1024
# llhttp's version string -> the bytes the rest of the request path compares.
_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
# llhttp also reads RTSP/x.y and ICE/x.y request lines. httptools reports only their version,
# so the pure build checks the protocol token on the bytes themselves: a cheap scan of every
# read for these, and a closer look only when one shows up. The compiled build's llhttp driver
# is told the protocol name by llhttp and refuses another itself (llhttp_request.pyx).
_SCAN_FOR_PROTOCOL = not COMPILED
_FOREIGN_PROTOCOLS = (b"RTSP/", b"ICE/")
_TOKEN_SPLIT = 4  # a token cut between two reads has at most this many bytes in the first


def _names_foreign_protocol(data: bytes) -> bool:
    """Is RTSP/ or ICE/ anywhere in `data`? It runs on every read, so it is the cheapest call
    that searches: `partition` takes the token as a buffer as it is; `find` first packs its
    arguments into a tuple and parses them (~60% more per read), and `token in data` first
    tries the token as an integer and builds a TypeError for it (docs/decisions.md)."""
    rtsp, ice = _FOREIGN_PROTOCOLS
    return bool(data.partition(rtsp)[1] or data.partition(ice)[1])


def host_of(value: bytes) -> str:
    """split_host, remembered for the values seen most."""
    host = _HOSTS.get(value)
    if host is None:
        host = split_host(value)  # raises on a bad one, which is never remembered
        if len(_HOSTS) >= _HOSTS_MAX:
            _HOSTS.clear()
        _HOSTS[value] = host
    return host


def split_host(value: bytes) -> str:
    """Host header -> lower-case host without port; raises on anything that is not a host."""
    host = value.strip().lower()
    if not host or host.translate(None, _HOST_CHARS):  # anything left is not a host character
        raise RequestError(400, "invalid Host header")
    if host.startswith(b"["):
        end = host.find(b"]")
        if end < 0:
            raise RequestError(400, "invalid Host header")
        rest = host[end + 1:]
        if rest and not (rest.startswith(b":") and rest[1:].isdigit()):
            raise RequestError(400, "invalid Host header")
        return host[1:end].decode("ascii")
    name, sep, port = host.partition(b":")
    if sep and not port.isdigit() or not name:
        raise RequestError(400, "invalid Host header")
    return name.decode("ascii")


class RequestReader:
    """Feeds client bytes to llhttp and turns its callbacks into checked request events."""

    __slots__ = fields(__name__, "RequestReader")  # its .pxd declares them

    def __init__(self, events: RequestEvents, limits: Limits) -> None:
        self._events = events
        # The limits as plain numbers: they are compared on every header. The compiled build
        # keeps them as C integers (parser.pxd); no count ever exceeds sys.maxsize, so a
        # larger limit (an operator's "no limit") means the same capped, and would otherwise
        # fail every connection there with an OverflowError.
        self._max_url = min(limits.max_url_bytes, sys.maxsize)
        self._max_header_bytes = min(limits.max_header_bytes, sys.maxsize)
        self._max_header_count = min(limits.max_header_count, sys.maxsize)
        self._max_body = min(limits.max_body_bytes, sys.maxsize)
        self._parser = _RequestParser(self)
        self._names = HeaderNames()
        # The Host value of this connection's last request and what it named: a client sends
        # the same one every time, and comparing bytes is cheaper than the shared cache.
        self._last_host_header: bytes | None = None
        self._last_host = ""
        self._head = RequestHead()
        self._url_bytes = 0
        self._head_size = 0  # request line + header lines, as parsed
        # Bytes fed while a head or a trailer section is incomplete. httptools keeps a header
        # field whole in memory until its end, so this, not the parsed size, bounds memory.
        self._head_bytes = 0
        self._body_bytes = 0
        self._in_head = True  # reading a head or a trailer section (not a body)
        self._hosts = 0
        # A Connection or Proxy-Connection header was sent (llhttp reads both for keep-alive).
        self._keep_alive_asked = False
        # A request's first byte has arrived but its head is not complete yet: the owner's
        # header deadline applies, not its keep-alive idle one.
        self.head_started = False
        # The reads a head still unfinished at the end of a read came in (the line of a
        # request is looked for in them when a protocol token shows up); empty nearly always.
        self._head_reads: list[bytes] = []

    @property
    def body_received(self) -> int:
        """Body bytes of the request being read, so far (for limits.min_body_rate)."""
        return self._body_bytes

    def feed(self, data: bytes) -> int | None:
        """Parse `data`. Returns None, or for an upgrade the offset where tunnel bytes start.
        Raises RequestError with the status to answer."""
        if self._in_head:
            self._head_bytes += len(data)
        upgrade = self._feed_scanning(data) if _SCAN_FOR_PROTOCOL else self._feed_checked(data)
        if upgrade is not None:
            return upgrade
        if self._in_head and self._head_bytes > self._max_header_bytes:
            raise RequestError(431, "request header too large")
        return None

    def _feed_scanning(self, data: bytes) -> int | None:
        """_feed_checked, for the pure build: the protocol token looked for in the bytes first."""
        reads = self._head_reads
        if _names_foreign_protocol(data) or (reads and self._token_across(reads, data)):
            upgrade = self._feed_checking_protocol(data)
        else:
            upgrade = self._feed_checked(data)
        if upgrade is None:
            if self.head_started:
                # The head goes on in the next read (bounded by the header size limit).
                reads.append(data)
            elif reads:
                reads.clear()
        return upgrade

    def _feed_checked(self, data: bytes) -> int | None:
        """llhttp on `data`; its errors as RequestError, an upgrade as the tunnel's offset."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            return int(exc.args[0])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, RequestError):
                raise cause from None
            raise
        except httptools.HttpParserInvalidMethodError:
            raise RequestError(400, "invalid method") from None
        except httptools.HttpParserError as exc:
            raise RequestError(400, f"malformed request: {exc}") from None
        return None

    @staticmethod
    def _token_across(reads: list[bytes], data: bytes) -> bool:
        """Does a token start in the reads before `data` and end in it? Its first bytes may lie
        in several short reads: the last _TOKEN_SPLIT bytes of them all are looked at."""
        tail = b""
        for read in reversed(reads):
            tail = read[-(_TOKEN_SPLIT - len(tail)):] + tail
            if len(tail) >= _TOKEN_SPLIT:
                break
        return _names_foreign_protocol(tail + data[:_TOKEN_SPLIT])

    def _feed_checking_protocol(self, data: bytes) -> int | None:
        """The rare read with RTSP/ or ICE/ in it (or cut across its start): fed up to each
        token, so that llhttp has just read what precedes it, and refused where the token is
        the protocol of the request line being read. Elsewhere (a header value, a body) the
        token is just bytes. The answer does not depend on how the bytes were cut into reads."""
        before = b"".join(self._head_reads)
        buf = before + data
        offset = len(before)
        positions = []
        for token in _FOREIGN_PROTOCOLS:
            at = buf.find(token, max(offset - _TOKEN_SPLIT, 0))
            while at >= 0:
                positions.append(at)
                at = buf.find(token, at + 1)
        positions.sort()
        fed = 0
        for at in positions:
            cut = at - offset
            if cut > fed:
                upgrade = self._feed_checked(data[fed:cut])
                if upgrade is not None:
                    return fed + upgrade
                fed = cut
            if self._request_line_ends_at(buf, at):
                raise RequestError(400, "unsupported protocol")
        upgrade = self._feed_checked(data[fed:])
        return None if upgrade is None else fed + upgrade

    def _request_line_ends_at(self, buf: bytes, at: int) -> bool:
        """Is `buf[at:]` the protocol of the request line llhttp is reading: is what precedes
        it this head's `method SP target SP`? (Where the line starts is not known: a previous
        body may end right before it. A header value spelling this head's own method and
        target before a token is refused too, whatever the reads' cuts.)"""
        if not self.head_started:
            return False  # between messages or in a body: not a request line
        target = self._head.target
        if not target:
            return False
        method = self._parser.get_method()
        start = at - len(target) - 2 - len(method)
        return (start >= 0 and buf[start + len(method):at] == b" " + target + b" "
                and buf[start:start + len(method)] == method)

    # -- llhttp callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.head_started = True
        # _head_bytes is not reset here: the bytes fed since the last message ended are this head's.
        self._head = RequestHead()
        self._names.restart()
        self._url_bytes = 0
        self._head_size = 0
        self._body_bytes = 0
        self._hosts = 0
        self._keep_alive_asked = False

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        self._head_size += len(url)
        if self._url_bytes > self._max_url:
            raise RequestError(414, "request target too long")
        self._head.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        head = self._head
        headers = head.headers
        if len(headers) >= self._max_header_count:
            raise RequestError(431, "too many request headers")
        lname = self._names.lower(name)
        headers.append((lname, name, value))
        # Cheap enough to keep exact: the running head size (name, value, ": ", CRLF).
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._max_header_bytes:
            raise RequestError(431, "request header too large")
        n = len(lname)
        if n >= 64 or not _SPECIAL_LENGTHS >> n & 1:
            return  # no special name has its length, nor a look-alike of a framing one
        if lname not in _SPECIAL_HEADERS:
            # The framing names themselves are special: what matches here has an underscore.
            if n in _LOOKALIKE_LENGTHS and lname.replace(b"_", b"-") in _FRAMING_LOOKALIKES:
                raise RequestError(400, "invalid header name")
            return
        if lname == b"host":
            self._hosts += 1
            if self._hosts > 1:
                raise RequestError(400, "repeated Host header")
            head.host_header = value
        elif lname == b"transfer-encoding":
            if head.chunked:
                raise RequestError(400, "repeated Transfer-Encoding")
            if value.strip().lower() != b"chunked":
                raise RequestError(501, "unsupported transfer coding")
            head.chunked = True
        elif lname == b"content-length":
            if head.content_length is not None:
                raise RequestError(400, "repeated Content-Length")
            if not value.isdigit() or len(value) > 18:
                raise RequestError(400, "invalid Content-Length")
            head.content_length = int(value)
        elif lname == b"connection":
            self._keep_alive_asked = True
            head.connection = value if head.connection is None else head.connection + b"," + value
        elif lname == b"proxy-connection":
            self._keep_alive_asked = True  # hop-by-hop, never forwarded; llhttp honours it
        elif lname == b"upgrade":
            head.upgrade = value.strip().lower()
        elif lname == b"expect":
            if value.strip().lower() != b"100-continue":
                raise RequestError(417, "unsupported expectation")
            head.expect_continue = True
        elif lname == b"x-forwarded-for":
            head.forwarded_for = value if head.forwarded_for is None else head.forwarded_for + b", " + value
        elif lname == b"x-request-id":
            head.request_id = value
        elif lname == b"cookie":
            head.cookie = value if head.cookie is None else head.cookie + b"; " + value

    def on_headers_complete(self) -> None:
        self.head_started = False
        self._in_head = False
        self._head_bytes = 0
        head = self._head
        parser = self._parser
        method = _METHODS.get(parser.get_method())
        keep_alive = parser.should_keep_alive()
        if keep_alive and not self._keep_alive_asked:
            # Of the versions llhttp accepts (0.9, 1.0, 1.1, 2.0), only HTTP/1.1 is kept alive
            # without a Connection (or Proxy-Connection) header asking for it: no need to
            # format the version string.
            version = b"1.1"
        else:
            version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            raise RequestError(400, "unsupported HTTP version")
        head.version = version
        if method is None:
            raise RequestError(501, "method not supported")
        head.method = method
        # The parsed target and headers, plus "METHOD ", " HTTP/1.x\r\n" and the blank line.
        head.size = self._head_size + len(method) + 14
        if version == b"1.0" and head.chunked:
            raise RequestError(400, "Transfer-Encoding on HTTP/1.0")
        if head.content_length is not None and head.content_length > self._max_body:
            raise RequestError(413, "request body too large")
        self._check_target(head)
        host_header = head.host_header
        if host_header is not None:
            if host_header == self._last_host_header:
                head.host = self._last_host
            else:
                head.host = host_of(host_header)
                self._last_host_header = host_header
                self._last_host = head.host
        elif version == b"1.1":
            raise RequestError(400, "missing Host header")
        head.keep_alive = keep_alive
        # llhttp sees an upgrade only with an Upgrade header (CONNECT is refused above).
        if head.upgrade is not None and parser.should_upgrade():
            if head.upgrade != b"websocket":
                raise RequestError(400, "only WebSocket upgrades are supported")
            if head.has_body:
                raise RequestError(400, "upgrade request with a body")
        else:
            head.upgrade = None
        self._events.request_started(head)

    def _check_target(self, head: RequestHead) -> None:
        target = head.target
        if not target.startswith(b"/"):
            lower = target[:8].lower()
            if not (lower.startswith(b"http://") or lower.startswith(b"https://")):
                raise RequestError(400, "unsupported request target")
            # Absolute form (RFC 9112 §3.2.2): the authority replaces Host. Whether that host is
            # ours is for the router to say; a foreign one is refused there (no open proxy).
            rest = target[target.index(b"//") + 2:]
            slash = rest.find(b"/")
            authority, target = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
            if b"@" in authority or not authority:
                raise RequestError(400, "invalid absolute-form target")
            head.host_header = authority
            head.headers = [h for h in head.headers if h[0] != b"host"]
            head.headers.append((b"host", b"Host", authority))
            head.target = target
            head.absolute = True
        # `in` (a buffer search) before `partition`: `find` parses its optional arguments,
        # ~500 instructions a request in the compiled build (docs/decisions.md, "Speed").
        head.path = target.partition(b"?")[0] if b"?" in target else target

    def on_chunk_header(self) -> None:
        # After a chunk size line comes chunk data, or, after the last one, a trailer section
        # that httptools buffers like a head: count what is fed until data shows up (on_body).
        self._in_head = True
        self._head_bytes = 0
        if self._head.method:
            # The head went to the exchange at on_headers_complete and must not change after:
            # trailer fields land in a head of their own, are checked like header fields
            # (limits, a second Host), and are never forwarded. Were they appended to the
            # request's head, a trailer `Idempotency-Key` could make a POST retryable.
            self._head = RequestHead()

    def on_body(self, body: bytes) -> None:
        self._in_head = False
        self._body_bytes += len(body)
        if self._body_bytes > self._max_body:
            raise RequestError(413, "request body too large")
        self._events.request_body(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._events.request_ended()
