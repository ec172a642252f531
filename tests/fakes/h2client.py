"""HTTP/2 clients for the tests: a well-behaved one on the `h2` state machine, and a raw one
that writes whatever frames a test wants (an attacker's) and reads the balancer's frames back.
"""

from __future__ import annotations

import asyncio
import ssl

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, RstStreamFrame, SettingsFrame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
WAIT = 20.0  # generous: the suite shares two cores with busy loops


def alpn_context(ca: object | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca is not None:
        ca.configure_trust(context)  # type: ignore[attr-defined]
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


async def open_stream(port: int, ca: object | None = None, server_hostname: str = "casino.example.com"):
    if ca is None:
        return await asyncio.open_connection("127.0.0.1", port)
    return await asyncio.open_connection("127.0.0.1", port, ssl=alpn_context(ca),
                                         server_hostname=server_hostname)


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.informational: list[list[tuple[bytes, bytes]]] = []
        self.body = bytearray()
        self.ended = False
        self.reset: int | None = None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def ws_text(message: str) -> bytes:
    """A masked WebSocket text frame (RFC 6455 §5.2), as a client sends it."""
    payload = message.encode()
    mask = b"\x01\x02\x03\x04"
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class H2Client:
    """A player's HTTP/2 connection, on h2 (client side)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 settings: dict | None = None, validate: bool = True) -> None:
        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                           validate_outbound_headers=validate,
                                           normalize_outbound_headers=validate)
        self.conn = h2.connection.H2Connection(config=config)
        if settings:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.responses: dict[int, Response] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.remote_settings: dict[int, int] = {}
        self.closed = False
        self.auto_window = True
        self._changed = asyncio.Event()
        self.conn.initiate_connection()
        self.writer.write(self.conn.data_to_send())
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, port: int, ca: object | None = None, **kwargs) -> "H2Client":
        reader, writer = await open_stream(port, ca)
        return cls(reader, writer, **kwargs)

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for event in self.conn.receive_data(data):
                    self._event(event)
                self.writer.write(self.conn.data_to_send())
                self._changed.set()
        except Exception:
            pass
        self.closed = True
        self._changed.set()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            r = self.responses[event.stream_id]
            r.headers = list(event.headers)
            r.status = int(dict(r.headers)[b":status"])
        elif isinstance(event, h2.events.InformationalResponseReceived):
            self.responses[event.stream_id].informational.append(list(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            self.responses[event.stream_id].body += event.data
            if self.auto_window and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.responses[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            if event.stream_id in self.responses:
                self.responses[event.stream_id].reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            for code, change in event.changed_settings.items():
                self.remote_settings[int(code)] = change.new_value

    async def until(self, predicate, timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def start(self, method: str, path: str, headers: list[tuple[str, str]] = (), body: bytes | None = None,
              authority: str = "a.example", end: bool = True) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":scheme", "https"), (":authority", authority),
                  (":path", path), *headers]
        self.responses[stream_id] = Response()
        self.conn.send_headers(stream_id, [(k.encode(), v.encode()) for k, v in fields],
                               end_stream=end and body is None)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=end)
        self.writer.write(self.conn.data_to_send())
        return stream_id

    def send_data(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self.conn.send_data(stream_id, data, end_stream=end)
        self.writer.write(self.conn.data_to_send())

    async def send_body(self, stream_id: int, data: bytes, end: bool = True) -> None:
        """`data` as DATA frames, as the balancer's windows allow."""
        conn = self.conn
        while True:
            window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            if data and window <= 0:
                await self.until(lambda: conn.local_flow_control_window(stream_id) > 0)
                continue
            chunk, data = data[:window], data[window:]
            self.send_data(stream_id, chunk, end and not data)
            if not data:
                return

    async def request(self, method: str, path: str, headers: list[tuple[str, str]] = (),
                      body: bytes | None = None, authority: str = "a.example") -> Response:
        stream_id = self.start(method, path, headers, body, authority)
        response = self.responses[stream_id]
        await self.until(lambda: response.ended or response.reset is not None or self.closed)
        return response

    def close(self) -> None:
        self._task.cancel()
        self.writer.close()


class RawH2:
    """Writes frames as given (no state machine on our side) and reads what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.frames: list[Frame] = []

    @classmethod
    async def open(cls, port: int, ca: object | None = None, settings: dict[int, int] | None = None) -> "RawH2":
        reader, writer = await open_stream(port, ca)
        raw = cls(reader, writer)
        hello = SettingsFrame(0)
        hello.settings = settings or {}
        writer.write(PREFACE + hello.serialize())
        return raw

    def send(self, *frames: Frame | bytes) -> None:
        for frame in frames:
            self.writer.write(frame if isinstance(frame, bytes) else frame.serialize())

    def header_block(self, fields: list[tuple[str, str]]) -> bytes:
        return self.encoder.encode([(k.encode(), v.encode()) for k, v in fields])

    def headers(self, stream_id: int, fields: list[tuple[str, str]], end_stream: bool = True,
                end_headers: bool = True) -> HeadersFrame:
        frame = HeadersFrame(stream_id)
        frame.data = self.header_block(fields)
        if end_stream:
            frame.flags.add("END_STREAM")
        if end_headers:
            frame.flags.add("END_HEADERS")
        return frame

    @staticmethod
    def get(stream_id: int, path: str = "/", authority: str = "a.example") -> list[tuple[str, str]]:
        return [(":method", "GET"), (":scheme", "http"), (":authority", authority), (":path", path)]

    async def next_frame(self) -> Frame | None:
        try:
            head = await self.reader.readexactly(9)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        frame, length = Frame.parse_frame_header(memoryview(head))
        body = await self.reader.readexactly(length) if length else b""
        frame.parse_body(memoryview(body))
        self.frames.append(frame)
        return frame

    async def until_closed(self, timeout: float = WAIT) -> list[Frame]:
        """Every frame until the balancer closes the connection."""
        async with asyncio.timeout(timeout):
            while await self.next_frame() is not None:
                pass
        return self.frames

    async def graceful_goaway_then_answer(self, stream_id: int) -> bytes:
        """A graceful GOAWAY (NO_ERROR, `stream_id` the last), then that stream's answer in
        full and the connection's close: the answer's :status."""
        goaway = await self.wait_for(GoAwayFrame)
        assert goaway is not None
        assert (goaway.error_code, goaway.last_stream_id) == (0, stream_id)
        head = await self.wait_for(HeadersFrame, stream_id=stream_id)
        assert head is not None
        frames = await self.until_closed()
        assert any("END_STREAM" in f.flags for f in frames if f.stream_id == stream_id)
        return dict(self.decoder.decode(head.data, raw=True))[b":status"]

    async def wait_for(self, kind: type, timeout: float = WAIT, **match) -> Frame | None:
        """The first frame of `kind` (with the attributes given), or None if the connection closed."""
        async with asyncio.timeout(timeout):
            for frame in self.frames:
                if isinstance(frame, kind) and all(getattr(frame, k) == v for k, v in match.items()):
                    return frame
            while (frame := await self.next_frame()) is not None:
                if isinstance(frame, kind) and all(getattr(frame, k) == v for k, v in match.items()):
                    return frame
        return None

    def goaway(self) -> GoAwayFrame | None:
        return next((f for f in self.frames if isinstance(f, GoAwayFrame)), None)

    def resets(self) -> list[RstStreamFrame]:
        return [f for f in self.frames if isinstance(f, RstStreamFrame)]

    def close(self) -> None:
        self.writer.close()
