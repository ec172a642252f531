"""The player's connection: an asyncio.Protocol wiring socket callbacks to the request reader.

Pipelined requests are answered in order: while one exchange is in progress, the next ones
are queued and reading pauses, so at most one read's worth of pipelined bytes is buffered.
Backpressure runs both ways: a player who does not read pauses the backend, and a backend that
does not read pauses the player.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..compiled import fields
from .downstream import Downstream
from .errors import RequestError, answer_bytes, error_response, head_of, reason_phrase
from .exchange import Exchange
from .head_bytes import *  # join_bytes, field_lines: C in the compiled build (headers.pxd), else Python
from .headers import HOP_BY_HOP, length_bits, request_id_from
from .parser import RequestHead, RequestReader
from .timers import Deadline
from ..tls import client_certificate

if TYPE_CHECKING:
    from ..runtime import RuntimeRef
    from ..server import ListenerServer

# Why reading from the player is paused; reading resumes when no reason is left.
_PIPELINE = 1
_UPSTREAM = 2
_TUNNEL_WAIT = 4

# limits.min_body_rate is enforced after this much free time, checked at this coarse interval.
BODY_RATE_GRACE = 1.0
BODY_RATE_INTERVAL = 0.5
# What an HTTP/2 connection preface (RFC 9113 §3.4) begins with; no HTTP/1.1 request does.
PREFACE_START = b"PRI * HTTP/2.0"
# How long a closing connection keeps reading (and dropping) what the client still sends.
LINGER = 2.0

_STATUS_LINES: dict[int, tuple[bytes, bytes]] = {}  # status -> (reason, line)


def status_line(status: int, reason: bytes) -> bytes:
    """The status line relayed for a backend's status and reason phrase (its own, kept)."""
    cached = _STATUS_LINES.get(status)
    if cached is not None and cached[0] == reason:
        return cached[1]
    line = b"HTTP/1.1 %d %s\r\n" % (status, reason or reason_phrase(status))
    if cached is None and len(_STATUS_LINES) < 512:
        _STATUS_LINES[status] = (reason, line)  # backends send the same few over and over
    return line


# The lengths of the hop-by-hop names (headers.length_bits): most of an answer's names are told
# apart from them by length alone. A set widened by the backend's Connection header (0) has
# every name looked up.
_HOP_LENGTHS = length_bits(HOP_BY_HOP)

class ClientConnection(Downstream):
    """An HTTP/1.1 player connection: an asyncio.Protocol (by its methods: the class is
    compiled, and a compiled class cannot derive from a Python one; see balancer/compiled.py),
    and the `Downstream` of the exchanges it carries, one after the other."""

    __slots__ = fields(__name__, "ClientConnection")  # its .pxd declares them

    def __init__(self, server: "ListenerServer", proxied_ip: str | None = None) -> None:
        self.server = server
        self.listener = server.config
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        # The listener's holder of the runtime in force: read per request, never stale.
        self._runtime: RuntimeRef = server.runtime
        limits = self._runtime.current.limits
        self.reader = RequestReader(self, limits)
        # The address a trusted PROXY header carried, if any; connection_made falls back to
        # the TCP peer.
        self.client_ip = proxied_ip or ""
        self.peer_trusted = False
        self.scheme = b"https" if server.config.tls is not None else b"http"
        self.tls_version: str | None = None  # "TLSv1.3" on a TLS listener (the access log's)
        # The player's verified certificate (tls.ClientCertificate) on a listener that asks.
        self.client_cert = None
        self.facts = None  # runtime.Facts for its requests in turn (the exchange's)
        self.exchange: Exchange | None = None  # the one being answered
        self.reading: Exchange | None = None  # the one whose request is being read
        # Pipelined requests waiting their turn: the shared empty tuple until one waits (then a
        # list; rarely more than one waits). An empty deque would take 760 bytes and an empty
        # list 56 on each of 10,000 idle WebSockets.
        self.queue: list[Exchange] | tuple[()] = ()
        self.deadline = Deadline(self.loop, self._on_deadline)
        self._paused = 0
        self.write_paused = False
        self._chunked_out = False  # the response being sent is framed in chunks
        self._close_after = False  # its body ends when the connection does (HTTP/1.0)
        self.closed = False
        self.tunnel: Exchange | None = None
        self._batch: list[bytes] | None = None
        self._error: RequestError | None = None
        self._idle = True  # between requests: no byte of the next request read yet
        self._received = False  # any byte at all on this connection
        self._body_rate = limits.min_body_rate
        self._body_since = 0.0  # loop time the watched request body's rate is measured from
        self._body_base = 0  # body bytes already read at _body_since
        self._lingering = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.client_ip:
            peer = transport.get_extra_info("peername")
            self.client_ip = peer[0] if peer else ""
        if self.server.ssl_context is not None:
            tls = transport.get_extra_info("ssl_object")
            if self.server.http2_alpn and tls is not None and tls.selected_alpn_protocol() == "h2":
                self.closed = True
                self.server.speak_http2(self, transport, b"")
                return
            self.tls_version = tls.version() if tls is not None else None
        runtime = self._runtime.current
        self.peer_trusted = runtime.is_trusted(self.client_ip)
        asks = self.listener.tls
        if asks is not None and asks.client_certificate is not None:
            self.client_cert = client_certificate(transport)
        self.server.connection_opened(self)
        # HAProxy's `timeout http-request`: the first request head is due from accept on.
        self.deadline.set_in(runtime.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.deadline is not None:  # none in a tunnel (start_tunnel)
            self.deadline.cancel()
        self.server.connection_closed(self)
        exchange = self.exchange
        self.exchange = None
        if exchange is not None:
            exchange.client_lost()
        queue = self.queue
        self.queue = ()
        for queued in queue:
            queued.client_lost()
        tunnel = self.tunnel
        if tunnel is not None and tunnel is not exchange:
            tunnel.client_lost()

    def eof_received(self) -> bool | None:
        return None  # the player closed its side: close ours, connection_lost follows

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.tunnel_from_client(data)
            return
        if self._error is not None or self.closed:
            return
        if not self._received and self.server.http2_prior_knowledge and data[:14] == PREFACE_START:
            # h2c with prior knowledge: the connection preface instead of a request.
            self.closed = True
            self.deadline.cancel()
            self.server.speak_http2(self, self.transport, data)
            return
        if self._idle:
            # A new request begins: the idle timer becomes the header timer, once per request
            # (re-arming it on every packet would let a slowloris trickle on for ever).
            self._idle = False
            if self._received:
                self.deadline.set_in(self._runtime.current.limits.header_timeout)
            self._received = True
        try:
            offset = self.reader.feed(data)
        except RequestError as exc:
            self._reject(exc)
            return
        if offset is not None:
            self._upgrade_read(data[offset:])

    def pause_writing(self) -> None:
        self.write_paused = True
        exchange = self.tunnel or self.exchange
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        exchange = self.tunnel or self.exchange
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.resume_reading()

    # -- request events from the reader ---------------------------------------------------

    def request_started(self, head: RequestHead) -> None:
        exchange = Exchange(self, head, self._runtime.current)
        self.reading = exchange
        if self.exchange is None:
            self.deadline.clear()
            self.exchange = exchange
            self._begin(exchange)
        else:
            if self.queue:
                self.queue.append(exchange)
            else:
                self.queue = [exchange]
            self._pause(_PIPELINE)
        if (head.chunked or head.content_length) and self._body_rate and not self.closed:
            # The deadline is free while a request is in progress: it now watches the body rate.
            now = self.loop.time()
            self._body_since = now
            self._body_base = 0
            self.deadline.set_at(now + BODY_RATE_GRACE + BODY_RATE_INTERVAL)

    def request_body(self, data: bytes) -> None:
        reading = self.reading
        if reading is not None:
            reading.request_body(data)

    def request_ended(self) -> None:
        if self._body_since:
            self._body_since = 0.0
            self.deadline.clear()
        reading = self.reading
        if reading is not None:
            reading.request_ended()

    def _upgrade_read(self, rest: bytes) -> None:
        """The reader stopped at an upgrade request's head: hold what follows until the 101."""
        exchange = self.reading
        if exchange is None:
            return
        exchange.request_done = True
        if rest:
            exchange.tunnel_from_client(rest)
        if not exchange.tunnel:
            self._pause(_TUNNEL_WAIT)

    def _begin(self, exchange: Exchange) -> None:
        try:
            exchange.begin()
        except RequestError as exc:
            exchange.reply(exc.status, exc.message, close=exc.close)

    # -- writing to the player (Downstream) ------------------------------------------------

    def send_interim(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes, bytes]]) -> int:
        out = [status_line(status, reason)]
        for lname, name, value in headers:
            if lname not in HOP_BY_HOP:
                out.extend((name, b": ", value, b"\r\n"))
        out.append(b"\r\n")
        data = join_bytes(out)
        self.write(data)
        return len(data)

    def send_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes, bytes]],
                  drop: frozenset, extra: list | None, framed: bool, close: bool) -> int:
        out = [status_line(status, reason),
               field_lines(headers, drop, _HOP_LENGTHS if drop is HOP_BY_HOP else 0,
                           status == 101)]
        exchange = self.exchange  # the one answered: pipelined ones wait their turn
        version = exchange.head.version if exchange is not None else b"1.1"
        if status == 101:
            out.append(b"connection: upgrade\r\n")
        elif not framed:
            if version == b"1.1":
                self._chunked_out = True
                out.append(b"transfer-encoding: chunked\r\n")
            else:
                self._close_after = close = True  # HTTP/1.0 reads a close-delimited body
        if extra is not None:
            for name, value in extra:
                out.append(name)
                out.append(b": ")
                out.append(value)
                out.append(b"\r\n")
        if close:
            out.append(b"connection: close\r\n")
        elif version == b"1.0":
            out.append(b"connection: keep-alive\r\n")
        out.append(b"\r\n")
        data = join_bytes(out)
        self.write(data)
        return len(data)

    def send_body(self, data: bytes) -> int:
        if self._chunked_out:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self.write(data)
        return len(data)

    def end_response(self) -> int:
        if self._chunked_out:
            self._chunked_out = False
            self.write(b"0\r\n\r\n")
            return 5
        return 0

    def send_answer(self, status: int, fields: list, body: bytes, close: bool, head_only: bool) -> int:
        data = answer_bytes(status, fields, body, close, head_only)
        self.write(data)
        return len(data)

    def write(self, data: bytes) -> None:
        batch = self._batch
        if batch is not None:
            batch.append(data)
        elif not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

    def begin_batch(self) -> None:
        if self._batch is None:
            self._batch = []

    def flush(self) -> None:
        batch = self._batch
        if batch is not None:
            self._batch = None
            if batch and not self.closed:
                self.transport.write(join_bytes(batch) if len(batch) > 1 else batch[0])  # type: ignore[union-attr]

    # -- exchange lifecycle -----------------------------------------------------------------

    def exchange_finished(self, exchange: Exchange) -> None:
        if exchange is not self.exchange:
            return
        close = exchange.close_client or self._close_after
        if close or self._error is not None and not self.queue:
            if self._error is not None and not close:
                self._send_error(self._error)
            self.close()
            return
        if self.queue:
            nxt = self.queue.pop(0)
            self.exchange = nxt
            if not self.queue:
                self._resume(_PIPELINE)
            self._begin(nxt)
            return
        self.exchange = None
        if self._error is not None:
            self._send_error(self._error)
            self.close()
            return
        if self.reading is exchange and exchange.request_done:
            limits = exchange.runtime.limits
            if self.reader.head_started:
                # The next request's head began arriving during this exchange: it is due
                # within header_timeout from now, or a slowloris could idle on for ever.
                self.deadline.set_in(limits.header_timeout)
            else:
                self._idle = True
                self.deadline.set_in(limits.client_idle_timeout)

    def start_tunnel(self, exchange: Exchange) -> None:
        self.tunnel = exchange
        # The exchange's idle sweep watches a tunnel: no timer of its own (with its bound
        # callback) on each of thousands of idle WebSockets.
        self.deadline.cancel()
        self.deadline = None  # type: ignore[assignment]
        # Bytes only from now on: the HTTP parser's state is dead weight on a socket that may
        # stay open for hours (10,000 of them per worker).
        self.reader = None  # type: ignore[assignment]
        self.facts = None  # for choosing a backend: no further request is read
        self._resume(_TUNNEL_WAIT)

    # -- errors, timeouts, closing --------------------------------------------------------

    def _reject(self, error: RequestError) -> None:
        """The reader refused a request: answer in order, then close."""
        reading = self.reading
        self.reading = None
        self._pause(_PIPELINE)
        if reading is not None and reading.request_done:
            # That request was read whole; the bad bytes are a later pipelined one. The good
            # request is still answered (or stays queued), and the error follows it.
            reading = None
        if reading is not None and reading is self.exchange:
            if reading.response_started:
                self.abort()
                return
            reading.abort_upstream()
            reading.request_done = True
            reading.reply(error.status, error.message, close=True)
            self.flush()
            return
        if reading is not None and reading in self.queue:
            self.queue.remove(reading)
            error.head_only = reading.head.method == b"HEAD"
        if self.exchange is None:
            self._send_error(error)
            self.close()
        else:
            self._error = error  # answered after the requests before it

    def _send_error(self, error: RequestError) -> None:
        """Refuse a request that never became an exchange (its head was bad or too slow)."""
        self.server.count_rejected_status(error.status)
        request_id = request_id_from(None)
        data = error_response(error.status, error.message, request_id, True)
        if error.head_only:
            data = head_of(data)
        self.write(data)
        self.flush()
        access_log = self._runtime.current.access_log
        if access_log is not None and access_log.on:
            access_log.refused(self, error.status, request_id, len(data))

    def _on_deadline(self) -> None:
        if self._lingering:
            self.close()
            return
        if self.closed:
            return
        if self._body_since:
            self._check_body_rate()
            return
        if self.exchange is None and (self._idle or not self._received):
            self.close()  # keep-alive idle, or a silent connection: close quietly
            return
        self._reject(RequestError(408, "request timeout"))

    def _check_body_rate(self) -> None:
        """A request body must keep up limits.min_body_rate (after BODY_RATE_GRACE), or the
        request gets 408: a client trickling a body would hold a backend connection for ever.
        Time in which the balancer itself stopped reading (a slow backend, pipelining), or
        waits to send 100 Continue, is not held against the client: the measurement starts
        again."""
        reading = self.reading
        if reading is None:  # that request was refused meanwhile
            self._body_since = 0.0
            return
        now = self.loop.time()
        received = self.reader.body_received
        if self._paused or received == self._body_base and reading.head.expect_continue:
            # An Expect: 100-continue client rightly waits for the backend's 100 first.
            self._body_since = now
            self._body_base = received
        elif received - self._body_base < self._body_rate * (now - self._body_since - BODY_RATE_GRACE):
            self._body_since = 0.0
            self._reject(RequestError(408, "request body too slow"))
            return
        self.deadline.set_at(now + BODY_RATE_INTERVAL)

    def _pause(self, reason: int) -> None:
        if not self._paused and not self.closed:
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and not self.closed:
                self.transport.resume_reading()  # type: ignore[union-attr]

    def pause_request_body(self) -> None:
        self._pause(_UPSTREAM)

    def resume_request_body(self) -> None:
        self._resume(_UPSTREAM)

    def close(self) -> None:
        self.flush()
        transport = self.transport
        if transport is None:
            return
        if self._lingering:  # the linger time is over, or the balancer shuts down
            self._lingering = False
            transport.close()
        elif not self.closed:
            if self.tunnel is None and transport.can_write_eof():
                self._linger(transport)
            else:
                transport.close()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close gracefully, as nginx's lingering_close: send FIN after the answer, then read
        and drop what the client still sends for up to LINGER seconds. Closing at once with
        unread input would make the kernel send a RST, which can destroy the answer (a 400 or
        413) in the client's receive buffer before it is read."""
        self.closed = True  # no more requests are read and nothing more is written
        self._lingering = True
        self._body_since = 0.0
        transport.write_eof()
        transport.resume_reading()
        self.deadline.set_in(LINGER)

    def abort(self) -> None:
        self._batch = None
        if not self.closed and self.transport is not None:
            self.transport.abort()

