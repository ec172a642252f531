"""Backend connections and their keep-alive pool.

An `UpstreamConnection` carries one exchange at a time (no pipelining towards backends, so a
failure is always attributable to one request). Between exchanges it waits in its backend's
`idle` list with its last-used time. Taking one (`take_idle`) is synchronous and pure,
as in httpcore: expired ones and ones whose peer has closed are dropped, and nothing awaits
between taking it and using it.
"""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import httptools

from .. import outlier
from ..compiled import COMPILED, fields
from ..failures import connect_failed
from .errors import PROTOCOL, RESET, STALE, TIMEOUT
from .head_bytes import *  # join_bytes: C in the compiled build (headers.pxd), else Python
from .headers import HeaderNames, length_bits
from .timers import Deadline

if COMPILED:  # the same llhttp, its events delivered as C calls (llhttp_parser.pyx)
    from .llhttp_response import ResponseParser as _ResponseParser
else:
    from httptools import HttpResponseParser as _ResponseParser

if TYPE_CHECKING:
    from ..pool import Backend, Pool
    from ..tls import BackendTls
    from .exchange import Exchange

# Response headers on_header notes besides keeping them.
_WATCHED = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})
_WATCHED_LENGTHS = length_bits(_WATCHED)
_HAS_LENGTH, _CHUNKED = 1, 2


class _Unsolicited(Exception):
    """Raised from the parser callback when a backend starts a response nobody asked for
    (bytes after a complete response, or a body after a bodiless one)."""


class _HeadTooLarge(Exception):
    """Raised from the parser callback when a response head passes its limit."""


class _HeadResponseDone(Exception):
    """Raised from the parser callback to stop llhttp after a HEAD response's head."""


class _NotSwitching(Exception):
    """Raised from the parser callback for a 101 that names no protocol: a malformed answer."""


class Outbox:
    """Request bytes for backends, held until the event loop's turn has run its callbacks,
    then written together (HAProxy's loop does the same: it reads every ready connection, then
    sends what they produced).

    A turn reads many players' requests. Written one by one as each is read, every request can
    wake the backend on its own: measured on the bench's nginx backends, 0.32 context switches
    a request against HAProxy's 0.09, 3 us more of the backends' CPU a request. Held to the end
    of the turn, they reach the backend together and it answers them in one wake-up (0.06).
    The wait is the rest of one turn of the loop, which the player waited for anyway."""

    __slots__ = fields(__name__, "Outbox")  # its .pxd declares them

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._waiting: list[UpstreamConnection] = []

    def hold(self, conn: UpstreamConnection) -> None:
        """`conn` has bytes held: send them at the end of this turn."""
        if not self._waiting:
            # call_soon from a callback runs in the next turn, after this turn's I/O callbacks.
            self.loop.call_soon(self.send)
        self._waiting.append(conn)

    def send(self) -> None:
        waiting = self._waiting
        self._waiting = []
        for conn in waiting:
            try:
                conn.send_held()
            except Exception:  # a transport that refuses the write must not hold up the rest
                conn.abort()  # its connection_lost tells the exchange, as any failure


# The outbox of the loop that made the latest connection. A process runs one loop at a time,
# so this is the one asked for; a connection keeps the one it was made with.
_last_outbox: Outbox | None = None


def outbox_of(loop: asyncio.AbstractEventLoop) -> Outbox:
    global _last_outbox
    outbox = _last_outbox
    if outbox is None or outbox.loop is not loop:
        outbox = _last_outbox = Outbox(loop)
    return outbox


class UpstreamConnection:
    """An asyncio.Protocol by its methods (compiled: see balancer/compiled.py)."""

    __slots__ = fields(__name__, "UpstreamConnection")  # its .pxd declares them

    def __init__(self, backend: Backend, loop: asyncio.AbstractEventLoop) -> None:
        self.backend = backend
        self.loop = loop
        self._outbox = outbox_of(loop)
        # Pieces for the backend at the end of the loop's turn (a list: body chunks read with
        # the head are appended, never copied onto what is held).
        self._held: list[bytes] | None = None
        self.transport: asyncio.Transport | None = None
        self._new_parser()
        self.exchange: Exchange | None = None
        self.last_used = 0.0
        self.closed = False
        self.deadline = Deadline(loop, self._on_deadline)
        self._status_reason = b""
        # (lower-case name, name as sent, value) of the response being read
        self._headers: list[tuple[bytes, bytes, bytes]] = []
        self._names = HeaderNames()
        self._framing = 0
        self._connection: bytes | None = None
        self._head_sent = False
        self._until_close = False
        self._tunnel = False
        self._reading_paused = False
        self.expect_head_only = False
        self.idle_timeout = 60.0
        self.pool: Pool | None = None  # the pool of the last exchange (outlier detection)
        self.max_head = 65536  # limits.max_response_header_bytes
        self._head_bytes = 0  # bytes read while a response head is incomplete (bounds memory)
        self._head_size = 0  # the response head as parsed (status line and header lines)
        self._answered = False  # a response byte arrived for the current exchange
        self._reused = False  # the current exchange is not this connection's first
        self._ours = False  # we closed it (else the backend did)
        self._in_feed = False  # the parser is reading: a released connection waits (parked)
        self._parked = False  # released during this read: pooled once the read ends cleanly
        # The pool's `tls` settings this connection was made with (None: plain); a pooled
        # connection is reused only while they are still the pool's (take_idle).
        self.tls_config = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.backend.open_connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.backend.open_connections -= 1
        if self.deadline is not None:  # none in a tunnel (drop_http_state)
            self.deadline.cancel()
        exchange = self.exchange
        if exchange is None:
            if not self._ours and self.last_used and self in self.backend.idle:
                # The backend closed a pooled connection: its idle limit, most likely.
                self.backend.idle_connection_closed(self.loop.time() - self.last_used, False)
            self._forget_idle()
            return
        self.exchange = None
        if self._tunnel:
            exchange.tunnel_closed()
        elif self._until_close and self._head_sent:
            exchange.response_end(self, reusable=False)  # close-delimited body ended
        elif self._reused and not self._answered:
            # Closed or reset before any answer on a connection that had served before: the
            # backend ended it as idle while the request was on its way (or died meanwhile).
            exchange.upstream_failed(self, STALE)
        else:
            exchange.upstream_failed(self, RESET)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # A backend must not speak unasked: bytes after a complete response, or on an idle
            # connection. Whatever they are, this connection is unusable and the backend faulty.
            self._malformed()
            return
        if self._tunnel:
            exchange.tunnel_from_backend(data)
            return
        self._answered = True
        if not self._head_sent:
            self._head_bytes += len(data)
        client = exchange.client
        client.begin_batch()  # head and body of a small response leave in one write
        self._in_feed = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0])
            rest = data[offset:]
            if self.exchange is not None and self._tunnel and rest:
                exchange.tunnel_from_backend(rest)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _HeadResponseDone):
                self._new_parser()
                if _after_head(data):
                    self._parked = False
                    self._malformed()  # a body after a HEAD answer
            elif isinstance(cause, _Unsolicited):
                self._parked = False
                self._malformed()
            elif self.exchange is exchange:
                self._protocol_error(exchange)
            # else: the exchange gave this connection up from a callback (retry elsewhere)
        except httptools.HttpParserError:
            if self._parked:  # the response was complete; what followed it is not HTTP
                self._parked = False
                self._malformed()
            else:
                self._protocol_error(exchange)
        else:
            if self.exchange is exchange and not self._head_sent and self._head_bytes > self.max_head:
                self._protocol_error(exchange)  # a head that never ends is as bad as a long one
            elif self.exchange is exchange and self._head_sent and not self._tunnel:
                # A body is streaming: the response timeout counts from its latest bytes.
                # Once per read, not per chunk; a response that ended here released the
                # connection to its idle deadline instead.
                self.deadline.set_in(exchange.pool.response_timeout)
        self._in_feed = False
        if self._parked:
            self._parked = False
            self._pool_idle(self.last_used)
        client.flush()

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.pause_request_body()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.resume_request_body()

    def _new_parser(self) -> None:
        self.parser = _ResponseParser(self)

    # -- llhttp callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.exchange is None:
            raise _Unsolicited()
        self._headers = []
        self._names.restart()
        self._status_reason = b""
        self._framing = 0
        self._connection = None
        self._head_size = 15  # "HTTP/1.1 200 " and the line's CRLF

    def on_status(self, reason: bytes) -> None:
        self._status_reason += reason
        self._head_size += len(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = self._names.lower(name)  # once per header: the exchange filters on it
        self._headers.append((lname, name, value))
        self._head_size += len(name) + len(value) + 4
        n = len(lname)
        if n < 64 and _WATCHED_LENGTHS >> n & 1 and lname in _WATCHED:
            if lname == b"content-length":
                self._framing |= _HAS_LENGTH
            elif lname == b"transfer-encoding":
                if value.strip().lower().endswith(b"chunked"):
                    self._framing |= _CHUNKED
            elif lname == b"connection":
                self._connection = value if self._connection is None else self._connection + b"," + value
            else:
                self._keep_alive_timeout(value)

    def _keep_alive_timeout(self, value: bytes) -> None:
        """`Keep-Alive: timeout=5, max=100` (RFC 2068 §19.7.1): the backend's idle limit."""
        for part in value.split(b","):
            name, _, number = part.partition(b"=")
            if name.strip().lower() == b"timeout":
                try:
                    seconds = float(number.strip())
                except ValueError:
                    return
                if seconds > 0:
                    self.backend.keepalive_announced_as(seconds)
                return

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        headers = self._headers
        exchange = self.exchange
        assert exchange is not None
        if 100 <= status < 200 and status != 101:
            exchange.response_interim(status, self._status_reason, headers)
            return
        if self._head_size > self.max_head:
            raise _HeadTooLarge()
        self._head_sent = True
        chunked = bool(self._framing & _CHUNKED)
        has_length = bool(self._framing & _HAS_LENGTH)
        bodiless = self.expect_head_only or status in (204, 304)
        self._until_close = not (chunked or has_length or bodiless or status == 101)
        if status == 101:
            if not parser.should_upgrade() or exchange.head.upgrade is None:
                # RFC 9110 §15.2.2: a 101 names what it switches to (Upgrade, and Connection:
                # upgrade). Without them llhttp reads on as HTTP while the exchange would turn
                # into a tunnel, each side sure the other owns the connection (and the finished
                # half-tunnel would read the client's released request reader). And it answers
                # only a request that asked to switch: an unasked one would turn a player's
                # plain HTTP connection into a raw pipe to the backend. data_received answers
                # either as any malformed response: a protocol error.
                raise _NotSwitching()
            self._tunnel = True
        exchange.response_head(self, status, self._status_reason, headers, chunked,
                               has_length, bodiless, self._connection)
        if self.expect_head_only and status >= 200:
            self.expect_head_only = False
            self._end_message()
            raise _HeadResponseDone()

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.response_body(body)

    def on_message_complete(self) -> None:
        if not self._head_sent:
            return  # end of an interim (1xx) response; the final one follows
        if self._tunnel:
            return
        self._end_message()

    def _end_message(self) -> None:
        exchange = self.exchange
        self._head_sent = False
        if exchange is not None:
            exchange.response_end(self, reusable=self.parser.should_keep_alive())

    # -- used by the exchange -------------------------------------------------------------

    def start(self, exchange: Exchange, data: bytes, head_only: bool, repeatable: bool) -> None:
        """Begin an exchange on this connection and send the request bytes known so far:
        at the end of the loop's turn (`Outbox`), or at once for a request that must not
        reach a backend twice on a pooled connection (`repeatable` false)."""
        self.exchange = exchange
        self.pool = exchange.pool.pool
        self.expect_head_only = head_only
        self._head_sent = False
        self._until_close = False
        self._answered = False
        self._head_bytes = 0
        self._reused = self.last_used != 0.0
        if self._reading_paused:
            self.resume_reading()
        assert self.transport is not None
        if self._reused and not repeatable:
            # The exchange has just asked `at_risk` whether the backend closed this idle
            # connection: only a write now keeps that answer true. Held to the end of the
            # turn, a FIN arriving meanwhile would turn a bet into a 502.
            self.transport.write(data)
            return
        self._held = [data]  # nothing is held between exchanges: send_held ran, or close
        self._outbox.hold(self)

    def send_held(self) -> None:
        """The outbox's turn ended: what was held leaves (unless the connection closed)."""
        held = self._held
        self._held = None
        transport = self.transport
        # A transport closing under us (the backend reset it) tells the exchange through
        # connection_lost; the retry rules decide what becomes of the request.
        if held is not None and not self.closed and not transport.is_closing():  # type: ignore[union-attr]
            transport.write(held[0] if len(held) == 1 else join_bytes(held))  # type: ignore[union-attr]

    def abort(self) -> None:
        """Drop the connection so that its loss reaches the exchange (connection_lost)."""
        self._held = None
        if self.transport is not None:
            self.transport.abort()

    def drop_http_state(self) -> None:
        """The connection became a tunnel: release what reading HTTP needed."""
        self.parser = None
        self._names = None  # type: ignore[assignment]  # a tunnel never reads a head again
        self._headers = None  # type: ignore[assignment]
        self._connection = None
        self._status_reason = b""
        # The exchange's idle sweep watches a tunnel: no timer handle of its own.
        self.deadline.cancel()
        self.deadline = None  # type: ignore[assignment]

    def write(self, data: bytes) -> None:
        if self._held is not None:  # the head is still held: the body goes after it
            self._held.append(data)
        elif not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

    def release(self, now: float) -> None:
        """Back to the backend's keep-alive pool after a complete exchange. While the parser
        is still reading it waits (parked) until the read ends: bytes after the response
        must not become the answer to the next request put on it."""
        self.exchange = None
        # A backend that answered before the request left it (it did not wait to read one)
        # never gets it: sent now, its answer would be one nobody asked for.
        self._held = None
        self.deadline.clear()
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        self.last_used = now
        if self._in_feed:
            self._parked = True
        else:
            self._pool_idle(now)

    def _pool_idle(self, now: float) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        self.backend.idle.append(self)
        self.deadline.set_at(now + self.idle_timeout)

    def at_risk(self) -> bool:
        """Has the backend already closed this idle connection, though the loop has not
        read that yet? Asked before a request that must not be lost (poll, no waiting)."""
        transport = self.transport
        if transport is None:
            return True
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        # Readable while idle means a FIN, a reset or unasked bytes: unusable either way.
        return bool(select.select([sock.fileno()], (), (), 0)[0])

    def pause_reading(self) -> None:
        if not self._reading_paused and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_reading(self) -> None:
        if self._reading_paused and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def close(self) -> None:
        """Close without telling the exchange (the exchange already knows why)."""
        self.exchange = None
        self._held = None
        self._ours = True
        if self.transport is not None and not self.closed:
            self.transport.abort()

    # -- internals ------------------------------------------------------------------------

    def _protocol_error(self, exchange: Exchange) -> None:
        self.exchange = None
        exchange.upstream_failed(self, PROTOCOL)
        self.close()

    def _malformed(self) -> None:
        """The backend sent what no request asked for, after the exchange it belonged to was
        over: nothing more reaches any player from here; the connection is closed and the
        backend's fault counted, as any malformed answer (outlier detection sees it)."""
        self.close()
        self._forget_idle()
        backend = self.backend
        backend.count_error(PROTOCOL)
        if self.pool is not None:
            outlier.record_failure(self.pool, backend, time.monotonic())

    def _on_deadline(self) -> None:
        exchange = self.exchange
        if exchange is None:
            # Idle for timeouts.idle and the backend kept it open: its own limit is longer.
            self.backend.idle_connection_closed(self.loop.time() - self.last_used, True)
            self.close()
            self._forget_idle()
            return
        self.exchange = None
        if self._tunnel:
            exchange.tunnel_closed()
        else:
            exchange.upstream_failed(self, TIMEOUT)
        self.close()

    def _forget_idle(self) -> None:
        idle = self.backend.idle
        if self in idle:
            idle.remove(self)


def _after_head(data: bytes) -> bytes:
    """What follows the final response head in `data` (a read that ended a HEAD answer's
    head): interim 1xx heads are skipped. b"" when the head's end is not in this read."""
    start = 0
    while True:
        end = data.find(b"\r\n\r\n", start)
        if end < 0:
            return b""
        if data.startswith(b"HTTP/", start) and data[start + 9:start + 10] == b"1":
            start = end + 4  # an interim response: the final head follows
            continue
        return data[end + 4:]


def take_idle(backend: Backend, now: float, idle_timeout: float,
              tls: object = None) -> UpstreamConnection | None:
    """Pop `backend`'s most recently used live keep-alive connection, if it is safe to reuse.
    Ones whose peer has closed are dropped on the way (connection_lost removed most), and so
    are ones made with other TLS settings than the pool's `tls` now (a reload that turned TLS
    on, or changed its CA, must not reuse what the old settings accepted). Ones idle longer
    than the backend's known limit allows are left in place: nothing newer is there, and
    seeing whether the backend closes them keeps that limit right."""
    limit = backend.reuse_within
    if limit == 0.0 or limit > idle_timeout:
        limit = idle_timeout
    idle = backend.idle
    while idle:
        conn = idle[-1]
        if conn.closed or conn.transport is None or conn.transport.is_closing():
            idle.pop()
            continue
        age = now - conn.last_used
        if age > idle_timeout or (conn.tls_config is not tls and conn.tls_config != tls):
            idle.pop()
            conn.close()
            continue
        if age > limit:
            return None
        idle.pop()
        return conn
    return None


def close_pooled(backends: Iterable[Backend]) -> None:
    """Close the keep-alive connections pooled for `backends` (they left the pool, or the
    balancer stops)."""
    for backend in backends:
        for conn in backend.idle:
            conn.close()
        backend.idle.clear()


async def connect(backend: Backend, loop: asyncio.AbstractEventLoop, timeout: float,
                  idle_timeout: float, max_head: int,
                  tls: BackendTls | None = None) -> UpstreamConnection:
    """Open a new connection to `backend` within `timeout` (raises OSError / TimeoutError).

    With `tls`, the handshake is part of connecting: a certificate that does not verify, or a
    backend that does not speak TLS, is a failed connect (never a plain-text fallback)."""
    host, port = backend.host, backend.port
    try:
        if tls is None:
            opening = loop.create_connection(lambda: UpstreamConnection(backend, loop), host, port)
        else:
            opening = loop.create_connection(
                lambda: UpstreamConnection(backend, loop), host, port,
                ssl=tls.for_backend(host, port), server_hostname=tls.server_hostname(host),
                ssl_handshake_timeout=timeout)
        transport, conn = await asyncio.wait_for(opening, timeout)
        if conn.closed:
            # Accepted, then closed or reset before this coroutine ran on (a backend dying
            # under load): nothing was sent on it, so it is a failed connect, retried as one.
            raise ConnectionResetError("the backend closed the connection as it opened")
    except (OSError, asyncio.TimeoutError) as exc:
        connect_failed(backend, exc, timeout)
        raise
    conn.idle_timeout = idle_timeout
    conn.max_head = max_head
    if tls is not None:
        conn.tls_config = tls.config
    return conn
