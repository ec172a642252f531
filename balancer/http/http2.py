"""HTTP/2 for players: one connection, many streams, each stream one exchange.

`ngh2` (libnghttp2 behind a sans-I/O Python API) is the state machine: framing, HPACK, stream
states, flow-control windows, RFC 9113's checks of a request's fields, and the guards
libnghttp2 keeps itself (CONTINUATION floods, HPACK bombs, PING and SETTINGS ACK floods, the
"glitch" budget PRIORITY and empty-DATA floods spend). This module feeds it bytes, turns its
events into exchanges and guards what the library leaves to its user: how much a peer may make
the balancer do for nothing (rapid reset against the backends' work, control-frame floods
spread over many reads, windows never opened). Backends keep HTTP/1.1: each stream is
translated to the request head the exchange forwards (RFC 9113 §8), and the exchange's answer
back into HEADERS and DATA.

Backpressure: a stream's request body is acknowledged (its window reopened) only while its
backend takes it; a stream's response waits in the stream only while the player's window is
shut, and its backend is paused meanwhile. A slow player stalls only their own streams.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from typing import TYPE_CHECKING

from ngh2 import (
    Configuration, ConnectionClosed, DataReceived, GoAwayReceived, RequestReceived, Role,
    Setting, SettingsReceived, StreamClosed, StreamReset, TrailersReceived, WindowUpdated,
)
from ngh2 import Connection as _Ngh2Connection
from ngh2.exceptions import DenialOfServiceError, NGH2Error

from ..compiled import fields
from ..tls import client_certificate
from .client_side import BODY_RATE_GRACE, BODY_RATE_INTERVAL
from .downstream import Downstream, Field
from .errors import RequestError, error_answer
from .exchange import Exchange
from .headers import HOP_BY_HOP, request_id_from
from .methods import ALLOWED_METHODS, METHODS
from .parser import RequestHead, host_of

if TYPE_CHECKING:
    from ..server import ListenerServer

# RFC 9113 §7 error codes, as plain ints (compared per event).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
REFUSED_STREAM = 0x7
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB

# The method as the one shared object HTTP/1.1 requests carry (method sets and counters hash it).
_METHODS: dict[bytes, bytes] = METHODS
# Headers RFC 9113 §8.2.2 makes connection-specific: never in an HTTP/2 message. Leaving the
# exchange's HTTP/1.1 answer, they are dropped; arriving from a player, libnghttp2 refuses them.
_CONNECTION_SPECIFIC = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
})
# A WebSocket's HTTP/1.1 handshake answer that has no meaning in RFC 8441's 200.
_NOT_IN_200 = _CONNECTION_SPECIFIC | {b"sec-websocket-accept"}

# Frames that ask work of the balancer without moving a request forward (PING, SETTINGS,
# WINDOW_UPDATE, empty DATA, ...). A connection may send this many, plus FLOOD_PER_STREAM per
# stream it opens, before it is told to calm down (ENHANCE_YOUR_CALM). libnghttp2 acts on
# some of these itself, but only within one read (ACKs it could not send) or at its own pace.
FLOOD_ALLOWANCE = 1000
FLOOD_PER_STREAM = 20
# libnghttp2's own budget for frames that do nothing (PRIORITY, which never reaches this
# module, empty DATA, ...): FLOOD_ALLOWANCE at once, refilled by GLITCH_REFILL a second.
GLITCH_REFILL = 33
# Rapid reset (CVE-2023-44487): a client that cancels streams still in progress more often
# than it lets them finish, past this many, is cut off. Browsers cancel now and then.
RESET_ALLOWANCE = 100
# Where the request body's window stands when the connection opens (RFC 9113 default 65535):
# what one stream may have in flight towards a backend that does not read.
STREAM_WINDOW = 65535
# The connection window is shared by every stream: it is opened wide, so that streams whose
# backends are slow cannot hold the window the others need (libnghttp2 gives a stream's bytes
# back to the connection window only with the stream's own; see Http2Connection.window).
CONNECTION_WINDOW = 16 * 1024 * 1024
_MAX_WINDOW = 2**31 - 1

_CONFIGURATIONS: dict[tuple[int, int], Configuration] = {}


def _configuration(limits: object) -> Configuration:
    """The library's limits for this listener's: decoding stops (ENHANCE_YOUR_CALM) at twice
    max_header_bytes and max_header_count, so an HPACK bomb never inflates past it; a list
    between the two is answered 431 on its own stream. CONTINUATION (8 after a HEADERS) and
    queued ACKs (1000) keep libnghttp2's defaults, as does its RST_STREAM budget (1000, then
    33 a second), a backstop behind RESET_ALLOWANCE."""
    key = (limits.max_header_bytes, limits.max_header_count)  # type: ignore[attr-defined]
    config = _CONFIGURATIONS.get(key)
    if config is None:
        config = _CONFIGURATIONS[key] = Configuration(
            auto_window_update=False,  # windows reopen as backends take the bytes
            max_inbound_header_list_size=2 * key[0],
            max_inbound_header_count=2 * key[1] + 8,  # and the pseudo-header fields
            glitch_rate_limit=(FLOOD_ALLOWANCE, GLITCH_REFILL),
        )
    return config


def _goaway_frame(last_stream_id: int, code: int) -> bytes:
    """A GOAWAY frame (RFC 9113 §6.8) written past the library: a graceful one lets the open
    streams finish while later ones are refused here, and a connection the library has given
    up on (a flood it detected) still gets its answer."""
    return struct.pack(">IBIII", 8 << 8 | 0x7, 0, 0, last_stream_id, code)


class Http2Stream(Downstream):
    """One request stream, the `Downstream` of its exchange: the exchange's answer (status,
    fields, body, end) leaves as HEADERS and DATA frames on the player's connection."""

    __slots__ = fields(__name__, "Http2Stream")  # its .pxd declares them

    def __init__(self, conn: Http2Connection, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.server = conn.server
        self.listener = conn.listener
        self.loop = conn.loop
        self.client_ip = conn.client_ip
        self.peer_trusted = conn.peer_trusted
        self.scheme = conn.scheme
        self.tls_version = conn.tls_version
        self.client_cert = conn.client_cert
        self.facts = None  # runtime.Facts for its request (the exchange's)
        # The player takes no more: its connection's socket is full, or this stream's window
        # is shut (an exchange attaching a backend starts it paused).
        self.write_paused = conn.write_paused
        self.exchange: Exchange | None = None
        self.tunnel: Exchange | None = None
        self.closed = False
        self.head_sent = False
        self.head_only = False
        self.ended = False  # END_STREAM sent (or the stream reset): nothing more is written
        self.pending = bytearray()  # answer bytes waiting for the player's window
        self.end_pending = False
        self.handed = False  # answer bytes given to the library (it may hold some still)
        self.upstream_paused = False  # our reason: the player's window is shut
        self.unacked = 0  # request body received while the backend was not taking it
        self.reading_paused = False  # the exchange asked: the backend does not take more
        self.blocked_since = 0.0
        # limits.min_body_rate: loop time the request body's rate is measured from (0: not
        # watched), the body bytes received by then, and received in all.
        self.body_since = 0.0
        self.body_base = 0
        self.body_received = 0

    # -- the answer (Downstream) ---------------------------------------------------------------

    def send_interim(self, status: int, reason: bytes, headers: list[Field]) -> int:
        if self.head_sent or self.ended:
            return 0
        fields = [(b":status", b"%d" % status)]
        for lname, _name, value in headers:
            if lname not in HOP_BY_HOP:
                fields.append((lname, value))
        try:
            self.conn.h2.send_informational_response(self.stream_id, fields)  # 100, 103
        except NGH2Error:  # the player reset the stream meanwhile
            return 0
        self.conn.flush_soon()
        return _fields_size(fields)

    def send_head(self, status: int, reason: bytes, headers: list[Field], drop: frozenset,
                  extra: list | None, framed: bool, close: bool) -> int:
        # `framed` and `close` are HTTP/1.1's: a stream's body ends with END_STREAM, and the
        # connection carries other streams.
        if self.head_sent or self.ended:
            return 0
        self.head_sent = True
        tunnel = status == 101
        drop = _never_sent(drop, tunnel)
        status_value = b"200" if tunnel else _status_value(status)
        fields = [(b":status", status_value)]
        size = len(status_value) + 9  # the access log's count: each field before HPACK, plus 2
        length = None
        for lname, _name, value in headers:
            if lname in drop:
                continue
            if lname == b"content-length":
                length = value
            fields.append((lname, value))
            size += len(lname) + len(value) + 2
        if extra is not None:
            fields.extend(extra)
            size += _fields_size(extra)
        # RFC 9113 §8.1: a bodiless answer is HEADERS with END_STREAM, one frame.
        end = not tunnel and (self.head_only or status == 204 or status == 304 or length == b"0")
        conn = self.conn
        try:
            conn.send_response(self.stream_id, fields, end_stream=end)
        except NGH2Error:  # the player reset the stream meanwhile
            self.ended = True
            return 0
        conn.flush_soon()
        if end:
            self.ended = True
            conn.stream_done(self)
        return size

    def send_body(self, data: bytes) -> int:
        if self.ended or self.end_pending or not data:
            return 0
        if self.tunnel is not None or self.pending:
            self.pending += data
            self.conn.push(self)
        else:
            # Held until the backend's read is over (flush) or the answer ends: a small
            # answer's body and its END_STREAM leave as one DATA frame.
            self.pending += data
        return len(data)

    def end_response(self) -> int:
        if not self.ended:
            self.end_pending = True
            self.conn.push(self)
        return 0

    def begin_batch(self) -> None:
        return None  # frames already leave together, once per loop iteration (flush_soon)

    def flush(self) -> None:
        if self.pending:
            self.conn.push(self)
        else:
            self.conn.flush_soon()

    def exchange_finished(self, exchange: Exchange) -> None:
        # The stream and its exchange point at each other: letting go of it here frees both
        # by reference counting, not by the cycle collector (some 8 objects a request).
        self.exchange = None
        self.tunnel = None
        if self.ended:
            return
        if not self.head_sent:
            self.abort()  # given up without an answer: the player must not wait
            return
        self.end_pending = True
        self.conn.push(self)

    def start_tunnel(self, exchange: Exchange) -> None:
        self.tunnel = exchange

    def pause_request_body(self) -> None:
        self.reading_paused = True

    def resume_request_body(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            if self.unacked and not self.ended:
                self.conn.reopen_window(self, self.unacked)
                self.unacked = 0

    def close(self) -> None:
        """The exchange ends the player's side (a tunnel closed by its backend, a drain)."""
        if self.ended:
            return
        if self.tunnel is not None:
            self.end_pending = True
            self.conn.push(self)
            self.conn.flush()
        else:
            self.abort()

    def abort(self) -> None:
        """Half an answer cannot be mended: the stream is reset, the player sees it."""
        if not self.ended:
            self.conn.reset(self, INTERNAL_ERROR)

    # -- from the player ---------------------------------------------------------------------

    def lost(self) -> None:
        """The stream ended without its answer (reset, or the connection closed)."""
        self.ended = True
        self.closed = True
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            self.tunnel = None
            exchange.client_lost()


class Http2Connection:
    """The asyncio.Protocol of a player's HTTP/2 connection."""

    __slots__ = fields(__name__, "Http2Connection")  # its .pxd declares them

    def __init__(self, server: ListenerServer, client_ip: str, scheme: bytes) -> None:
        self.server = server
        self.listener = server.config
        self.loop = server.loop
        self.runtime_ref = server.runtime
        self.client_ip = client_ip
        self.peer_trusted = server.runtime.current.is_trusted(client_ip)
        self.scheme = scheme
        self.transport: asyncio.Transport | None = None
        self.tls_version: str | None = None  # the access log's
        self.client_cert = None  # a verified client certificate (listeners[].tls.client_certificate)
        limits = server.runtime.current.limits
        self.limits = limits
        # Inbound fields are checked by libnghttp2 (RFC 9113 §8.2); outbound ones are the
        # exchange's answer, already lower-case and without connection-specific fields
        # (Http2Stream.send_head).
        h2 = self.h2 = _Ngh2Connection(Role.SERVER, _configuration(limits))
        # The library's methods called for every read, stream or flush, bound once: a call by
        # name looks the method up and binds it each time.
        self.receive_data = h2.receive_data
        self.events = h2.events
        self.send_response = h2.send_response
        self.send_data = h2.send_data
        self.data_to_send = h2.data_to_send
        self.stream_window = h2.stream_remote_window_size
        self.queued_body_size = h2.queued_body_size
        # A paused stream keeps its unacknowledged bytes out of the connection window too (the
        # library reopens both together): the window holds every stream's at once, twice.
        self.window = min(_MAX_WINDOW, max(CONNECTION_WINDOW,
                                           2 * limits.max_concurrent_streams * STREAM_WINDOW))
        self.streams: dict[int, Http2Stream] = {}
        self.blocked: set[Http2Stream] = set()  # streams with answer bytes waiting for a window
        # Streams reset by the player or by this module: their StreamClosed is accounted for.
        self.accounted: set[int] = set()
        self.last_stream_id = 0  # the highest stream the player opened (GOAWAY's)
        self.write_paused = False
        self.closed = False
        self.draining = False
        self.flood = FLOOD_ALLOWANCE
        self.resets = 0
        self.finished_streams = 0
        self._timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None  # watches request bodies' rates
        self._flush_soon = False

    # -- the shutdown and listener view (as ClientConnection's) -----------------------------

    @property
    def exchange(self) -> Exchange | None:
        for stream in self.streams.values():
            if stream.exchange is not None and stream.tunnel is None:
                return stream.exchange
        return None

    @property
    def tunnel(self) -> Exchange | None:
        for stream in self.streams.values():
            if stream.tunnel is not None:
                return stream.tunnel
        return None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport, received: bytes = b"") -> None:
        self.transport = transport  # type: ignore[assignment]
        tls = transport.get_extra_info("ssl_object")
        if tls is not None:
            self.tls_version = tls.version()
            asks = self.listener.tls
            if asks is not None and asks.client_certificate is not None:
                self.client_cert = client_certificate(transport)
        self.server.connection_opened(self)  # type: ignore[arg-type]
        limits = self.limits
        self.h2.initiate_connection({
            Setting.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            Setting.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
            Setting.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            Setting.ENABLE_CONNECT_PROTOCOL: 1,  # RFC 8441: WebSockets over HTTP/2
        })
        self.h2.set_local_window_size(self.window)
        self._arm(self.limits.header_timeout)
        if received:
            self.data_received(received)
        else:
            self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed and self.transport is None:
            return
        self.closed = True
        self._cancel_timer()
        self._stop_body_watch()
        streams = list(self.streams.values())
        self.streams.clear()
        self.blocked.clear()
        for stream in streams:
            stream.lost()
        self.server.connection_closed(self)  # type: ignore[arg-type]
        self.transport = None

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        # The player does not read: nor do we (a PING or SETTINGS flood would otherwise fill
        # memory with ACKs), and every stream's backend waits.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()
        for stream in self.streams.values():
            stream.write_paused = True
            _pause_upstream(stream)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        for stream in list(self.streams.values()):
            if not stream.upstream_paused:
                stream.write_paused = False
                _resume_upstream(stream)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.receive_data(data)
        except DenialOfServiceError:
            # A flood libnghttp2 caught (CONTINUATION, an HPACK bomb, ACKs piling up): it
            # gives the connection up without a word; the player hears why from us.
            self.server.count_rejected("malformed")
            self.goaway(ENHANCE_YOUR_CALM)
            return
        except NGH2Error:  # the library already ended the connection (its GOAWAY is out)
            self._abort()
            return
        self._dispatch(self.events())
        self.flush()

    # -- events --------------------------------------------------------------------------------

    def _dispatch(self, events: list) -> None:
        for event in events:
            if self.closed:
                return
            kind = type(event)
            if kind is RequestReceived:
                self._request(event)
                if event.end_stream:
                    self._request_ended(event.stream_id)
            elif kind is StreamClosed:
                self._stream_closed(event.stream_id, event.error_code)
            elif kind is DataReceived:
                self._data(event)
                if event.end_stream:
                    self._request_ended(event.stream_id)
            elif kind is WindowUpdated:
                self._window_opened(event.stream_id)
                self._glitch()
            elif kind is StreamReset:
                self._reset_by_player(event.stream_id, event.error_code)
            elif kind is TrailersReceived:
                # Trailers are not forwarded (the backend's request may not be chunked); the
                # body before them is whole.
                self._glitch()
                self._request_ended(event.stream_id)
            elif kind is SettingsReceived:
                self._glitch()
                # A new initial window may open every stream's window at once.
                self._window_opened(0)
            elif kind is GoAwayReceived:
                self.draining = True
                self._close_when_done()
            elif kind is ConnectionClosed:
                self._ended_by_library(event.error_code)
            else:  # PING, SETTINGS ACK, PRIORITY_UPDATE, ...: work for nothing, counted
                self._glitch()

    def _glitch(self) -> None:
        self.flood -= 1
        if self.flood < 0:
            self.goaway(ENHANCE_YOUR_CALM)

    def _request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        if stream_id > self.last_stream_id:
            self.last_stream_id = stream_id
        if self.draining:
            self.accounted.add(stream_id)
            self.h2.reset_stream(stream_id, REFUSED_STREAM)
            return
        self.flood = min(self.flood + FLOOD_PER_STREAM, FLOOD_ALLOWANCE)
        self._cancel_timer_if_idle()
        stream = Http2Stream(self, stream_id)
        self.streams[stream_id] = stream
        runtime = self.runtime_ref.current
        ended = event.end_stream
        try:
            head = request_head(event.headers, runtime.limits, ended)
        except RequestError as exc:
            self.server.count_rejected_status(exc.status)
            fields, body = error_answer(exc.status, exc.message, request_id_from(None))
            stream.send_answer(exc.status, fields, body, False, False)
            if not ended and stream.ended:
                # The answer is complete; the body that may follow is not wanted (RFC 9113 §8.1).
                self._reset_after_answer(stream_id)
            return
        stream.head_only = head.method == b"HEAD"
        exchange = Exchange(stream, head, runtime)
        stream.exchange = exchange
        if head.upgrade is not None:
            exchange.request_done = True  # the tunnel carries what follows
        elif not ended and runtime.limits.min_body_rate:
            stream.body_since = self.loop.time()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(BODY_RATE_GRACE + BODY_RATE_INTERVAL,
                                                        self._check_body_rates)
        try:
            exchange.begin()
        except RequestError as exc:
            exchange.reply(exc.status, exc.message)

    def _request_ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if stream.tunnel is not None:
            stream.tunnel.close_for_drain()  # the player closed its side of the WebSocket
        elif stream.exchange is not None:
            stream.body_since = 0.0
            stream.exchange.request_ended()

    def _data(self, event: DataReceived) -> None:
        stream_id = event.stream_id
        data = event.data
        size = len(data)  # padding: the library gives its window back itself
        stream = self.streams.get(stream_id)
        if not size and not event.end_stream:
            self._glitch()  # empty DATA: a flood vector, not a body
        if stream is None or stream.ended or stream.exchange is None:
            # A stream already answered or refused: its window is given back, its bytes dropped.
            if size:
                self._acknowledge(stream_id, size)
            return
        exchange = stream.exchange
        stream.body_received += size
        if not size:
            return
        if stream.reading_paused:
            stream.unacked += size  # acknowledged when the backend catches up
        else:
            self._acknowledge(stream_id, size)
        if stream.tunnel is not None:
            exchange.tunnel_from_client(data)
        elif exchange.head.upgrade is not None:
            exchange.tunnel_from_client(data)  # before the 101: held, not forwarded
        else:
            exchange.request_body(data)

    def _stream_closed(self, stream_id: int, code: int) -> None:
        """The library closed a stream: an ordinary end (the stream was let go already), or
        one it reset itself. A malformed request (RFC 9113 §8.1.1: a connection-specific or
        upper-case field, a bad pseudo-header, content-length disagreeing with DATA) is reset
        PROTOCOL_ERROR on its own stream, often before this module saw it; it counts as a
        rejected request and as a reset (a client may not open them for ever)."""
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            self.blocked.discard(stream)
            self._release(stream)
            stream.lost()
        if code == NO_ERROR:
            if stream is not None:
                self._close_when_done()
            return
        if stream_id in self.accounted:
            self.accounted.discard(stream_id)  # not the library's reset
            return
        if code == PROTOCOL_ERROR:
            self.server.count_rejected("malformed")
        self.resets += 1
        if self.resets > RESET_ALLOWANCE and self.resets > self.finished_streams:
            self.goaway(ENHANCE_YOUR_CALM)
        else:
            self._close_when_done()

    def _reset_by_player(self, stream_id: int, code: int) -> None:
        if code != NO_ERROR:
            self.accounted.add(stream_id)
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self.blocked.discard(stream)
        self._release(stream)
        exchange = stream.exchange
        if exchange is not None and not exchange.finished:
            self.resets += 1
            if self.resets > RESET_ALLOWANCE and self.resets > self.finished_streams:
                self.goaway(ENHANCE_YOUR_CALM)
        stream.lost()
        self._close_when_done()

    def _ended_by_library(self, code: int) -> None:
        """libnghttp2 ended the connection (its GOAWAY is written): a connection error
        (RFC 9113 §5.4.1), or its glitch budget spent."""
        if code != NO_ERROR and code != ENHANCE_YOUR_CALM:
            self.server.count_rejected("malformed")
        self._abort()

    # -- the request body's window ---------------------------------------------------------------

    def _acknowledge(self, stream_id: int, size: int) -> None:
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except (ValueError, NGH2Error):
            # The stream is closed: the library keeps no count of its bytes any more, nor
            # gives them back to the connection window. They are added to it instead.
            self._window_lost(size)

    def _window_lost(self, size: int) -> None:
        if self.closed or self.window >= _MAX_WINDOW:
            return
        self.window = min(_MAX_WINDOW, self.window + size)
        try:
            self.h2.set_local_window_size(self.window)
        except NGH2Error:
            pass

    def _release(self, stream: Http2Stream) -> None:
        """A stream let go with request bytes its backend never took: their window is given
        back to the connection."""
        if stream.unacked:
            size = stream.unacked
            stream.unacked = 0
            self._acknowledge(stream.stream_id, size)

    def reopen_window(self, stream: Http2Stream, size: int) -> None:
        self._acknowledge(stream.stream_id, size)
        self.flush()

    # -- writing to the player ---------------------------------------------------------------

    def push(self, stream: Http2Stream) -> None:
        """Send what the stream holds as far as the windows allow (the last part with
        END_STREAM when the answer is complete); the rest waits, its backend paused."""
        if stream.ended or self.closed:
            return
        h2conn = self.h2
        stream_id = stream.stream_id
        pending = stream.pending
        try:
            if pending:
                # What the player's windows take beyond what the library holds already (of
                # this stream's, nothing before its first bytes: one call fewer per answer).
                window = self.stream_window(stream_id)
                if stream.handed:
                    window -= self.queued_body_size(stream_id)
                window = min(window, h2conn.remote_window_size - self.queued_body_size())
                if window >= len(pending):
                    last = stream.end_pending
                    self.send_data(stream_id, bytes(pending), end_stream=last)
                    stream.handed = True
                    pending.clear()
                    if last:
                        stream.ended = True
                elif window > 0:
                    self.send_data(stream_id, bytes(pending[:window]))
                    stream.handed = True
                    del pending[:window]
            if not pending and stream.end_pending and not stream.ended:
                h2conn.end_stream(stream_id)
                stream.ended = True
        except NGH2Error:
            stream.ended = True  # the player reset it meanwhile
        self.flush_soon()
        if stream.ended:
            self.blocked.discard(stream)
            self.stream_done(stream)
            return
        if pending:
            if stream not in self.blocked:
                self.blocked.add(stream)
                stream.blocked_since = self.loop.time()
                self._arm_stall()
            if not stream.upstream_paused:
                stream.upstream_paused = True
                stream.write_paused = True
                _pause_upstream(stream)
        elif stream.upstream_paused:
            stream.upstream_paused = False
            self.blocked.discard(stream)
            if not self.write_paused:
                stream.write_paused = False
                _resume_upstream(stream)

    def _window_opened(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None and stream.pending:
                self.push(stream)
            return
        for stream in list(self.blocked):
            self.push(stream)

    def stream_done(self, stream: Http2Stream) -> None:
        if self.streams.pop(stream.stream_id, None) is not None:
            self.finished_streams += 1
            self._release(stream)
        self._close_when_done()

    def reset(self, stream: Http2Stream, code: int) -> None:
        stream.ended = True
        self.blocked.discard(stream)
        if self.streams.pop(stream.stream_id, None) is not None:
            self._release(stream)
        if code != NO_ERROR:
            self.accounted.add(stream.stream_id)
        try:
            self.h2.reset_stream(stream.stream_id, code)
        except NGH2Error:
            pass
        self.flush()
        self._close_when_done()

    def _reset_after_answer(self, stream_id: int) -> None:
        """RST_STREAM NO_ERROR after a complete answer (RFC 9113 §8.1): the answer's frames
        are written first, as the library would otherwise drop them with the stream."""
        self.flush()
        try:
            self.h2.reset_stream(stream_id, NO_ERROR)
        except NGH2Error:
            pass

    def flush_soon(self) -> None:
        """Frames queued outside a read (a backend's answer, a timer) leave once per loop
        iteration, together."""
        if not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_soon = False
        if self.closed:
            return
        try:
            data = self.data_to_send()
            # Sending closes streams (a malformed one the library reset, an answer's last
            # frame) and may end the connection: their events come now.
            events = self.events()
        except NGH2Error:
            return  # the library has given the connection up; goaway/_abort close it
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        if events:
            self._dispatch(events)

    # -- ending --------------------------------------------------------------------------------

    def goaway(self, code: int = NO_ERROR) -> None:
        """Refuse new streams; the open ones finish (NO_ERROR) or are cut (an error). The
        frame is written past the library: it would stop reading at a graceful GOAWAY of its
        own, and these streams finish, later ones are refused (REFUSED_STREAM) in _request."""
        if self.closed:
            return
        self.draining = True
        self.flush()
        if self.closed:
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(_goaway_frame(self.last_stream_id, code))
        if code != NO_ERROR:
            self._abort(flush=False)
        else:
            self._close_when_done()

    def drain(self) -> None:
        """Shutdown or reload: GOAWAY with the last stream id; open streams finish."""
        if not self.draining:
            self.goaway(NO_ERROR)

    def close(self) -> None:
        """Shutdown's last word: what is still open is cut."""
        if not self.closed:
            self.goaway(NO_ERROR)
            self._abort()

    def _close_when_done(self) -> None:
        if self.closed:
            return
        if self.streams:
            return
        if self.draining:
            self.flush()  # frames still queued (the last answer) leave before the FIN
            if self.closed:
                return
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            return
        self._arm(self.limits.client_idle_timeout)

    def _abort(self, flush: bool = True) -> None:
        if self.closed:
            return
        if flush:
            self.flush()
        self.closed = True
        self._stop_body_watch()
        transport = self.transport
        if transport is not None:
            transport.close()  # the GOAWAY already queued leaves first
        streams = list(self.streams.values())
        self.streams.clear()
        self.blocked.clear()
        for stream in streams:
            stream.lost()

    # -- timers: the first request's head, idle connections, shut windows ---------------------

    def _arm(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, self._on_idle)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _cancel_timer_if_idle(self) -> None:
        if not self.blocked:
            self._cancel_timer()

    def _on_idle(self) -> None:
        self._timer = None
        if self.closed:
            return
        if self.blocked:
            self._check_stalled()
            return
        if not self.streams:
            self.goaway(NO_ERROR)

    def _arm_stall(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_later(self.limits.client_idle_timeout, self._on_idle)

    def _check_stalled(self) -> None:
        """A window the player never opens holds a backend: after client_idle_timeout the
        stream is cancelled, as an HTTP/1.1 player that stops reading is cut off."""
        now = self.loop.time()
        limit = self.limits.client_idle_timeout
        for stream in list(self.blocked):
            if now - stream.blocked_since >= limit:
                self.reset(stream, CANCEL)
                stream.lost()  # the exchange lets its backend go
        self.flush()
        if self.blocked:
            oldest = min(stream.blocked_since for stream in self.blocked)
            self._timer = self.loop.call_later(max(0.05, oldest + limit - now), self._on_idle)
        else:
            self._close_when_done()


    # -- limits.min_body_rate, per stream ------------------------------------------------------

    def _check_body_rates(self) -> None:
        """Each request body in progress must keep up limits.min_body_rate (after
        BODY_RATE_GRACE), as over HTTP/1.1; a stream that does not gets 408 on its own, the
        connection's other streams go on. Time in which the balancer itself did not take the
        body (a slow backend), or an Expect: 100-continue client waits, is not held against it."""
        self._body_timer = None
        if self.closed:
            return
        now = self.loop.time()
        rate = self.limits.min_body_rate
        watching = False
        for stream in list(self.streams.values()):
            since = stream.body_since
            if not since:
                continue
            exchange = stream.exchange
            if exchange is None or exchange.request_done or stream.ended:
                stream.body_since = 0.0
            elif stream.reading_paused or (stream.body_received == stream.body_base
                                           and exchange.head.expect_continue):
                stream.body_since = now
                stream.body_base = stream.body_received
                watching = True
            elif stream.body_received - stream.body_base < rate * (now - since - BODY_RATE_GRACE):
                stream.body_since = 0.0
                self._body_too_slow(stream, exchange)
            else:
                watching = True
        if watching:
            self._body_timer = self.loop.call_later(BODY_RATE_INTERVAL, self._check_body_rates)
        self.flush_soon()

    def _body_too_slow(self, stream: Http2Stream, exchange: Exchange) -> None:
        if exchange.response_started:
            stream.abort()  # the backend answered already: half an exchange, cut
            return
        exchange.abort_upstream()  # what reached the backend is void
        exchange.request_done = True
        exchange.reply(408, "request body too slow")
        self._reset_after_answer(stream.stream_id)  # the rest is not wanted

    def _stop_body_watch(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None


def _pause_upstream(stream: Http2Stream) -> None:
    exchange = stream.exchange
    if exchange is not None and exchange.upstream is not None:
        exchange.upstream.pause_reading()


def _resume_upstream(stream: Http2Stream) -> None:
    exchange = stream.exchange
    if exchange is not None and exchange.upstream is not None:
        exchange.upstream.resume_reading()


# `drop` sets (the exchange's few: hop-by-hop fields, plus what a Connection header names)
# joined with what an HTTP/2 answer never carries: one set looked up per field, not two.
_NEVER_SENT: dict[frozenset, frozenset] = {}
_NEVER_SENT_TUNNEL: dict[frozenset, frozenset] = {}


def _never_sent(drop: frozenset, tunnel: bool) -> frozenset:
    table = _NEVER_SENT_TUNNEL if tunnel else _NEVER_SENT
    joined = table.get(drop)
    if joined is None:
        if len(table) >= 1024:
            table.clear()
        joined = table[drop] = drop | (_NOT_IN_200 if tunnel else _CONNECTION_SPECIFIC)
    return joined


_STATUS_VALUES: dict[int, bytes] = {}


def _status_value(status: int) -> bytes:
    """The :status value, one shared object per status (backends send the same few)."""
    value = _STATUS_VALUES.get(status)
    if value is None:
        value = _STATUS_VALUES[status] = b"%d" % status
    return value


def _fields_size(fields: list[tuple[bytes, bytes]]) -> int:
    """An answer head's size as the access log counts it: its fields before HPACK."""
    size = 0
    for name, value in fields:
        size += len(name) + len(value) + 2
    return size


def request_head(fields: list[tuple[bytes, bytes]], limits: object, ended: bool) -> RequestHead:
    """An HTTP/2 request's header list (already checked by libnghttp2: pseudo-headers first and once,
    lower-case names, no connection-specific fields, TE only `trailers`) as the request head the
    exchange forwards over HTTP/1.1 (RFC 9113 §8.3, §8.2.3)."""
    head = RequestHead()
    head.version = b"2.0"
    method = path = authority = protocol = None
    headers: list[tuple[bytes, bytes, bytes]] = []
    cookies: list[bytes] = []
    host_field: bytes | None = None
    size = 0
    for name, value in fields:
        size += len(name) + len(value) + 2
        if name[0] == 58:  # b":"
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":protocol":
                protocol = value
            continue
        if name == b"cookie":
            cookies.append(value)  # crumbs, joined below (RFC 9113 §8.2.3)
            continue
        if name == b"host":
            host_field = value
            continue
        if name == b"content-length":
            if not value.isdigit():
                raise RequestError(400, "invalid Content-Length")
            head.content_length = int(value)
        elif name == b"x-forwarded-for":
            head.forwarded_for = value
        elif name == b"x-request-id":
            head.request_id = value
        elif name == b"expect":
            head.expect_continue = value.lower() == b"100-continue"
        headers.append((name, name, value))
    if size > limits.max_header_bytes:  # type: ignore[attr-defined]
        raise RequestError(431, "request header fields too large")
    if len(headers) + len(cookies) > limits.max_header_count:  # type: ignore[attr-defined]
        raise RequestError(431, "too many header fields")
    if path is not None and len(path) > limits.max_url_bytes:  # type: ignore[attr-defined]
        raise RequestError(414, "URI too long")
    if method == b"CONNECT":
        if protocol is None or protocol.lower() != b"websocket" or path is None:
            raise RequestError(501, "CONNECT is not supported")
        # RFC 8441: an extended CONNECT is a WebSocket; the backend gets the HTTP/1.1 handshake.
        method = b"GET"
        head.upgrade = b"websocket"
        headers.append((b"sec-websocket-key", b"sec-websocket-key",
                        base64.b64encode(os.urandom(16))))
    elif protocol is not None:
        raise RequestError(400, ":protocol outside an extended CONNECT")
    if method not in ALLOWED_METHODS:
        raise RequestError(501, "method not implemented")
    if not path or not (path[0] == 47 or path == b"*" and method == b"OPTIONS"):  # b"/"
        raise RequestError(400, "invalid :path")
    value = authority if authority is not None else host_field
    if value is None:
        raise RequestError(400, "missing :authority")
    if authority is not None and host_field is not None and host_field.lower() != authority.lower():
        raise RequestError(400, "Host does not match :authority")
    head.host = host_of(value)  # remembered: a player sends the same :authority every time
    head.host_header = value
    head.method = _METHODS[method]
    head.target = path
    query = path.find(b"?")
    head.path = path if query < 0 else path[:query]
    if cookies:
        head.cookie = b"; ".join(cookies)
        headers.append((b"cookie", b"cookie", head.cookie))
    headers.insert(0, (b"host", b"host", value))
    head.headers = headers
    if not ended and head.upgrade is None:
        if head.content_length is None:
            head.chunked = True  # a body of unknown length goes to the backend chunked
    elif ended and head.content_length:
        raise RequestError(400, "Content-Length without a body")
    head.keep_alive = True
    return head
