"""HTTP/2 for players: one connection, many streams, each stream one exchange.

The `h2` package is the state machine (framing, HPACK, stream states, flow-control windows);
this module feeds it bytes, turns its events into exchanges and guards what h2 leaves to its
user: how much a peer may make the balancer do for nothing (rapid reset, control-frame floods,
windows never opened). Backends keep HTTP/1.1: each stream is translated to the request head
the exchange forwards (RFC 9113 §8), and the exchange's answer back into HEADERS and DATA.

Backpressure: a stream's request body is acknowledged (its window reopened) only while its
backend takes it; a stream's response waits in the stream only while the player's window is
shut, and its backend is paused meanwhile. A slow player stalls only their own streams.
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from h2.connection import StreamClosedBy
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, RstStreamFrame

from ..tls import client_certificate
from .client_side import BODY_RATE_GRACE, BODY_RATE_INTERVAL
from .downstream import Downstream, Field
from .errors import RequestError, error_answer
from .exchange import Exchange
from .headers import HOP_BY_HOP, request_id_from
from .parser import ALLOWED_METHODS, RequestHead, split_host

if TYPE_CHECKING:
    from ..server import ListenerServer

# The method as the one shared object HTTP/1.1 requests carry (method sets and counters hash it).
_METHODS: dict[bytes, bytes] = {method: method for method in ALLOWED_METHODS}
# Headers RFC 9113 §8.2.2 makes connection-specific: never in an HTTP/2 message. Leaving the
# exchange's HTTP/1.1 answer, they are dropped; arriving from a player, h2 refuses them.
_CONNECTION_SPECIFIC = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
})
# A WebSocket's HTTP/1.1 handshake answer that has no meaning in RFC 8441's 200.
_NOT_IN_200 = _CONNECTION_SPECIFIC | {b"sec-websocket-accept"}

# Frames that ask work of the balancer without moving a request forward (PING, SETTINGS,
# PRIORITY, WINDOW_UPDATE, empty DATA, ...). A connection may send this many, plus
# FLOOD_PER_STREAM per stream it opens, before it is told to calm down (ENHANCE_YOUR_CALM).
FLOOD_ALLOWANCE = 1000
FLOOD_PER_STREAM = 20
# Rapid reset (CVE-2023-44487): a client that cancels streams still in progress more often
# than it lets them finish, past this many, is cut off. Browsers cancel now and then.
RESET_ALLOWANCE = 100
# Where the request body's window stands when the connection opens (RFC 9113 default 65535):
# what one stream may have in flight towards a backend that does not read.
STREAM_WINDOW = 65535
# The connection window is shared by every stream: it is opened wide, so that one stream
# whose backend is slow cannot hold the window the others need.
CONNECTION_WINDOW = 16 * 1024 * 1024


class _ServerConnection(h2.connection.H2Connection):
    """h2's connection with RFC 9113's stream errors where h2 raises a connection error: a
    malformed request (§8.1.1: a connection-specific or upper-case field, a bad pseudo-header,
    content-length disagreeing with DATA) is reset with PROTOCOL_ERROR, a stream past
    SETTINGS_MAX_CONCURRENT_STREAMS is refused with REFUSED_STREAM (§5.1.2); the connection's
    other streams go on. `on_stream_error(stream_id, code)` tells the balancer's side."""

    on_stream_error = None

    def _receive_frame(self, frame: Frame) -> list:
        stream_id = frame.stream_id
        opening = isinstance(frame, HeadersFrame) and stream_id not in self.streams
        try:
            return super()._receive_frame(frame)
        except h2.exceptions.TooManyStreamsError:
            if stream_id % 2 == 0 or stream_id <= self.highest_inbound_stream_id:
                raise  # not a stream the client may open at all: a connection error
            # The block is decoded all the same: HPACK's table must stay in step (§4.3).
            self.decoder.decode(frame.data, raw=True)
            self.highest_inbound_stream_id = stream_id
            self._closed_streams[stream_id] = StreamClosedBy.SEND_RST_STREAM
            self._send_reset(stream_id, ErrorCodes.REFUSED_STREAM)
        except h2.exceptions.InvalidBodyLengthError:
            self._malformed(stream_id)
        except h2.exceptions.ProtocolError as exc:
            # h2 raises a plain ProtocolError for a field list it finds malformed; the state
            # and framing errors, which stay connection errors, are its subclasses.
            if type(exc) is not h2.exceptions.ProtocolError or not opening or stream_id not in self.streams:
                raise
            self._malformed(stream_id)
        return []

    def _malformed(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.closed:
            self._send_reset(stream_id, ErrorCodes.PROTOCOL_ERROR)
        else:
            self.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)

    def _send_reset(self, stream_id: int, code: int) -> None:
        frame = RstStreamFrame(stream_id)
        frame.error_code = code
        self._prepare_for_sending([frame])
        if self.on_stream_error is not None:
            self.on_stream_error(stream_id, code)

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        super().reset_stream(stream_id, error_code)
        if error_code == ErrorCodes.PROTOCOL_ERROR and self.on_stream_error is not None:
            self.on_stream_error(stream_id, error_code)


class Http2Stream(Downstream):
    """One request stream, the `Downstream` of its exchange: the exchange's answer (status,
    fields, body, end) leaves as HEADERS and DATA frames on the player's connection."""

    __slots__ = ("conn", "stream_id", "exchange", "tunnel", "closed", "head_sent", "head_only",
                 "ended", "pending", "end_pending", "upstream_paused", "unacked",
                 "reading_paused", "blocked_since", "body_since", "body_base", "body_received")

    def __init__(self, conn: Http2Connection, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.server = conn.server
        self.listener = conn.server.config
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
            self.conn.h2.send_headers(self.stream_id, fields)  # 100 Continue, 103 Early Hints
        except h2.exceptions.ProtocolError:  # the player reset the stream meanwhile
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
        never = _NOT_IN_200 if tunnel else _CONNECTION_SPECIFIC
        fields = [(b":status", b"200" if tunnel else _status_value(status))]
        length = None
        for lname, _name, value in headers:
            if lname in drop or lname in never:
                continue
            if lname == b"content-length":
                length = value
            fields.append((lname, value))
        if extra is not None:
            fields.extend(extra)
        # RFC 9113 §8.1: a bodiless answer is HEADERS with END_STREAM, one frame.
        end = not tunnel and (self.head_only or status == 204 or status == 304 or length == b"0")
        conn = self.conn
        try:
            conn.h2.send_headers(self.stream_id, fields, end_stream=end)
        except h2.exceptions.ProtocolError:  # the player reset the stream meanwhile
            self.ended = True
            return 0
        conn.flush_soon()
        if end:
            self.ended = True
            conn.stream_done(self)
        return _fields_size(fields)

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
            self.conn.reset(self, ErrorCodes.INTERNAL_ERROR)

    # -- from the player ---------------------------------------------------------------------

    def lost(self) -> None:
        """The stream ended without its answer (reset, or the connection closed)."""
        self.ended = True
        self.closed = True
        exchange = self.exchange
        if exchange is not None:
            exchange.client_lost()


class Http2Connection:
    """The asyncio.Protocol of a player's HTTP/2 connection."""

    def __init__(self, server: ListenerServer, client_ip: str, scheme: bytes) -> None:
        self.server = server
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
        # Inbound fields are checked (RFC 9113 §8.2); outbound ones are the exchange's answer,
        # already lower-case and without connection-specific fields (Http2Stream.send_head):
        # checking and normalising them again would be work per response for nothing.
        config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                           validate_inbound_headers=True,
                                           normalize_inbound_headers=False,
                                           validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        h2conn = _ServerConnection(config=config)
        h2conn.on_stream_error = self._stream_error
        h2conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
        })
        # Decoding stops here (ENHANCE_YOUR_CALM): an HPACK bomb never inflates past it. A list
        # between max_header_bytes and this is answered 431 on its own stream.
        h2conn.decoder.max_header_list_size = 2 * limits.max_header_bytes
        h2conn.decoder.max_allowed_table_size = 4096
        self.h2 = h2conn
        self.streams: dict[int, Http2Stream] = {}
        self.blocked: set[Http2Stream] = set()  # streams with answer bytes waiting for a window
        self.errored: set[int] = set()  # streams reset as malformed or refused in this read
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
            asks = self.server.config.tls
            if asks is not None and asks.client_certificate is not None:
                self.client_cert = client_certificate(transport)
        self.server.connection_opened(self)  # type: ignore[arg-type]
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
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
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._protocol_error(exc)
            return
        errored = self.errored
        for event in events:
            if self.closed:
                return
            if errored and getattr(event, "stream_id", 0) in errored:
                continue
            self._handle(event)
        errored.clear()
        self.flush()

    # -- events --------------------------------------------------------------------------------

    def _handle(self, event: h2.events.Event) -> None:
        kind = type(event)
        if kind is h2.events.RequestReceived:
            self._request(event)  # type: ignore[arg-type]
        elif kind is h2.events.DataReceived:
            self._data(event)  # type: ignore[arg-type]
        elif kind is h2.events.StreamEnded:
            stream = self.streams.get(event.stream_id)  # type: ignore[attr-defined]
            if stream is not None and stream.exchange is not None and stream.tunnel is None:
                stream.body_since = 0.0
                stream.exchange.request_ended()
            elif stream is not None and stream.tunnel is not None:
                stream.tunnel.close_for_drain()  # the player closed its side of the WebSocket
        elif kind is h2.events.WindowUpdated:
            self._window_opened(event.stream_id)  # type: ignore[attr-defined]
            self._glitch()
        elif kind is h2.events.StreamReset:
            self._reset_by_player(event.stream_id)  # type: ignore[attr-defined]
        elif kind is h2.events.ConnectionTerminated:
            self.draining = True
            self._close_when_done()
        elif kind is h2.events.TrailersReceived:
            stream = self.streams.get(event.stream_id)  # type: ignore[attr-defined]
            if stream is not None:
                # Trailers are not forwarded (the backend's request may not be chunked);
                # the body before them is whole.
                self._glitch()
        elif kind is h2.events.RemoteSettingsChanged:
            self._glitch()
            # A new initial window may open every stream's window at once.
            self._window_opened(0)
        else:  # PING, SETTINGS ACK, PRIORITY, ...: work for nothing, counted
            self._glitch()

    def _glitch(self) -> None:
        self.flood -= 1
        if self.flood < 0:
            self.goaway(ErrorCodes.ENHANCE_YOUR_CALM)

    def _request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self.draining:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self.flood = min(self.flood + FLOOD_PER_STREAM, FLOOD_ALLOWANCE)
        self._cancel_timer_if_idle()
        stream = Http2Stream(self, stream_id)
        self.streams[stream_id] = stream
        runtime = self.runtime_ref.current
        try:
            head = request_head(event.headers, runtime.limits, event.stream_ended)  # type: ignore[arg-type]
        except RequestError as exc:
            self.server.count_rejected_status(exc.status)
            fields, body = error_answer(exc.status, exc.message, request_id_from(None))
            stream.send_answer(exc.status, fields, body, False, False)
            if not event.stream_ended and stream.ended:
                # The answer is complete; the body that may follow is not wanted (RFC 9113 §8.1).
                try:
                    self.h2.reset_stream(stream_id, ErrorCodes.NO_ERROR)
                except h2.exceptions.ProtocolError:
                    pass
            return
        stream.head_only = head.method == b"HEAD"
        exchange = Exchange(stream, head, runtime)
        stream.exchange = exchange
        if head.upgrade is not None:
            exchange.request_done = True  # the tunnel carries what follows
        elif not event.stream_ended and runtime.limits.min_body_rate:
            stream.body_since = self.loop.time()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(BODY_RATE_GRACE + BODY_RATE_INTERVAL,
                                                        self._check_body_rates)
        try:
            exchange.begin()
        except RequestError as exc:
            exchange.reply(exc.status, exc.message)

    def _data(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id
        size = event.flow_controlled_length
        stream = self.streams.get(stream_id)
        if not event.data and not event.stream_ended:
            self._glitch()  # empty DATA: a flood vector, not a body
        if stream is None or stream.ended or stream.exchange is None:
            # A stream already answered or refused: its window is given back, its bytes dropped.
            if size:
                self.h2.acknowledge_received_data(size, stream_id)
            return
        exchange = stream.exchange
        stream.body_received += len(event.data)
        if stream.reading_paused:
            # The backend takes no more: the connection's window is given back (other
            # streams need it), this stream's only when the backend catches up.
            if size:
                self.h2.increment_flow_control_window(size)
            stream.unacked += size
        elif size:
            self.h2.acknowledge_received_data(size, stream_id)
        if not event.data:
            return
        if stream.tunnel is not None:
            exchange.tunnel_from_client(event.data)
        elif exchange.head.upgrade is not None:
            exchange.tunnel_from_client(event.data)  # before the 101: held, not forwarded
        else:
            exchange.request_body(event.data)

    def _stream_error(self, stream_id: int, code: int) -> None:
        """A stream refused or reset as malformed (_ServerConnection): its exchange, if it has
        one, is over; and it counts as a reset (a client may not open them for ever). A
        refused stream was not processed at all (the client may send it again): not counted
        as a rejected request."""
        self.errored.add(stream_id)  # its events of this read are void
        if code == ErrorCodes.PROTOCOL_ERROR:
            self.server.count_rejected("malformed")
        self.resets += 1
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            self.blocked.discard(stream)
            stream.lost()
        if self.resets > RESET_ALLOWANCE and self.resets > self.finished_streams:
            self.goaway(ErrorCodes.ENHANCE_YOUR_CALM)
        else:
            self._close_when_done()

    def _reset_by_player(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self.blocked.discard(stream)
        exchange = stream.exchange
        if exchange is not None and not exchange.finished:
            self.resets += 1
            if self.resets > RESET_ALLOWANCE and self.resets > self.finished_streams:
                self.goaway(ErrorCodes.ENHANCE_YOUR_CALM)
        stream.lost()
        self._close_when_done()

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
            while pending:
                window = h2conn.local_flow_control_window(stream_id)
                if window <= 0:
                    break
                size = min(window, h2conn.max_outbound_frame_size, len(pending))
                chunk = bytes(pending[:size])
                del pending[:size]
                last = not pending and stream.end_pending
                h2conn.send_data(stream_id, chunk, end_stream=last)
                if last:
                    stream.ended = True
            if not pending and stream.end_pending and not stream.ended:
                h2conn.end_stream(stream_id)
                stream.ended = True
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
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
        self._close_when_done()

    def reopen_window(self, stream: Http2Stream, size: int) -> None:
        try:
            self.h2.increment_flow_control_window(size, stream.stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.flush()

    def reset(self, stream: Http2Stream, code: int) -> None:
        stream.ended = True
        self.blocked.discard(stream)
        try:
            self.h2.reset_stream(stream.stream_id, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self.streams.pop(stream.stream_id, None)
        self.flush()
        self._close_when_done()

    def flush_soon(self) -> None:
        """Frames queued outside a read (a backend's answer, a timer) leave once per loop
        iteration, together."""
        if not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_soon = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- ending --------------------------------------------------------------------------------

    def goaway(self, code: int = ErrorCodes.NO_ERROR) -> None:
        """Refuse new streams; the open ones finish (NO_ERROR) or are cut (an error)."""
        if self.closed:
            return
        self.draining = True
        if code != ErrorCodes.NO_ERROR:
            try:
                self.h2.close_connection(code, last_stream_id=self.h2.highest_inbound_stream_id)
            except h2.exceptions.ProtocolError:
                pass
            self.flush()
        else:
            # Written past h2, whose close_connection would end the streams still open too:
            # these finish, later streams are refused (REFUSED_STREAM) in _request.
            self.flush()
            frame = GoAwayFrame(0)
            frame.last_stream_id = self.h2.highest_inbound_stream_id
            frame.error_code = ErrorCodes.NO_ERROR
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(frame.serialize())
        if code != ErrorCodes.NO_ERROR:
            self._abort()
        else:
            self._close_when_done()

    def drain(self) -> None:
        """Shutdown or reload: GOAWAY with the last stream id; open streams finish."""
        if not self.draining:
            self.goaway(ErrorCodes.NO_ERROR)

    def close(self) -> None:
        """Shutdown's last word: what is still open is cut."""
        if not self.closed:
            self.goaway(ErrorCodes.NO_ERROR)
            self._abort()

    def _close_when_done(self) -> None:
        if self.closed:
            return
        if self.streams:
            return
        if self.draining:
            self.flush()  # frames still queued (the last answer) leave before the FIN
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            return
        self._arm(self.limits.client_idle_timeout)

    def _abort(self) -> None:
        self.flush()
        self.closed = True
        self._stop_body_watch()
        transport = self.transport
        if transport is not None:
            transport.close()  # the GOAWAY already queued leaves first
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.lost()

    def _protocol_error(self, exc: h2.exceptions.ProtocolError) -> None:
        code = getattr(exc, "error_code", None) or ErrorCodes.PROTOCOL_ERROR
        if self.h2.state_machine.state != h2.connection.ConnectionState.CLOSED:
            try:
                self.h2.close_connection(code)
            except h2.exceptions.ProtocolError:
                pass
        self.server.count_rejected("malformed")
        self.flush()
        self._abort()

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
            self.goaway(ErrorCodes.NO_ERROR)

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
                self.reset(stream, ErrorCodes.CANCEL)
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
        try:
            self.h2.reset_stream(stream.stream_id, ErrorCodes.NO_ERROR)  # the rest is not wanted
        except h2.exceptions.ProtocolError:
            pass

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
    """An HTTP/2 request's header list (already checked by h2: pseudo-headers first and once,
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
    head.host = split_host(value)
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
