"""A small HTTP/1.1 server for the admin listener, on httptools (llhttp, the data plane's parser).

The admin API is a handful of JSON and text routes read by operators, Prometheus and probes.
aiohttp.web served it before, and importing aiohttp cost every balancer process ~12 MiB of
RSS whether or not anyone looked (docs/decisions.md, "Idle WebSockets, third pass"). This
server does only what the admin routes need: exact paths with `{name}` segments, GET (and
HEAD) and POST, a body with Content-Length or chunked, keep-alive, one request at a time per
connection in the order they came.

Routes match the path as sent, never a decoded or normalised one: `/%61dmin/pools` or
`//admin/pools` is no route (404), so the token check on `/admin` (admin.py) cannot be walked
around. A `{name}` segment's value is percent-decoded after matching.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Awaitable, Callable
from urllib.parse import unquote

import httptools

log = logging.getLogger("balancer.admin")

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
KEEP_ALIVE = 75.0  # seconds an idle admin connection stays open, as aiohttp.web's default


class Headers(dict):
    """Header values by name, whatever its case (names are stored lower-case)."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


class Request:
    """One admin request: method, path (without the query), headers by lower-case name."""

    __slots__ = ("method", "path", "headers", "body", "match_info", "scheme")

    def __init__(self, method: str, path: str, headers: Headers, body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.match_info: dict[str, str] = {}
        self.scheme = "http"

    @property
    def host(self) -> str:
        return self.headers.get("host", "")

    async def json(self) -> object:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.body.decode() if self.body else "")


class Response:
    __slots__ = ("status", "body", "headers")

    def __init__(self, body: bytes = b"", status: int = 200,
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}


def json_response(data: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(data).encode(), status,
                    {**(headers or {}), "Content-Type": "application/json; charset=utf-8"})


def text_response(status: int, text: str | None = None, headers: dict[str, str] | None = None) -> Response:
    body = (text if text is not None else f"{status}: {HTTPStatus(status).phrase}").encode()
    return Response(body, status, {**(headers or {}), "Content-Type": "text/plain; charset=utf-8"})


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    """(method, path pattern) -> handler; a pattern's `{name}` segment matches one segment."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, list[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, pattern.split("/"), handler))

    def resolve(self, request: Request) -> Handler | Response:
        """The handler (with request.match_info filled in), or the 404 or 405 to answer."""
        segments = request.path.split("/")
        allowed: list[str] = []
        for method, pattern, handler in self._routes:
            match = _match(pattern, segments)
            if match is None:
                continue
            if method == request.method or (method == "GET" and request.method == "HEAD"):
                request.match_info = match
                return handler
            allowed.append(method)
        if allowed:
            return text_response(405, headers={"Allow": ", ".join(sorted(set(allowed)))})
        return text_response(404)


def _match(pattern: list[str], segments: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    found: dict[str, str] = {}
    for want, have in zip(pattern, segments):
        if want.startswith("{") and want.endswith("}"):
            if not have:
                return None
            found[want[1:-1]] = unquote(have)
        elif want != have:
            return None
    return found


class AdminHttpServer:
    """Serves `handle(request)` on one address; `start()`, then `stop()` once."""

    def __init__(self, handle: Handler) -> None:
        self.handle = handle
        self.server: asyncio.base_events.Server | None = None
        self.connections: set[AdminConnection] = set()

    async def start(self, host: str, port: int) -> int:
        """Listens; the port bound (the one asked for, or the system's choice for 0)."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: AdminConnection(self), host, port,
                                               reuse_address=True)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for connection in list(self.connections):
            connection.abort()
        await self.server.wait_closed()


class AdminConnection(asyncio.Protocol):
    """One admin client: parses requests and answers them one after another."""

    def __init__(self, server: AdminHttpServer) -> None:
        self.owner = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: list[tuple[Request, bool]] = []  # parsed, not yet answered (pipelining)
        self.task: asyncio.Task | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.closing = False
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers = Headers()
        self.header_name = b""
        self.body: list[bytes] = []
        self.size = 0

    # -- transport --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.owner.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.connections.discard(self)
        self.closing = True
        if self.idle is not None:
            self.idle.cancel()
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.size += len(data)
        if self.size > MAX_HEAD + MAX_BODY:
            self._refuse(413)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400)
        except httptools.HttpParserError:
            self._refuse(400)

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # -- httptools callbacks ----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = dict.get(self.headers, key)
        self.headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        if self.size > MAX_HEAD and not self.body:
            raise httptools.HttpParserError("head too large")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        request = Request(method, path, self.headers, b"".join(self.body))
        self.queue.append((request, self.parser.should_keep_alive()))
        self._reset()
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._answer_all())

    # -- answering --------------------------------------------------------------------------

    async def _answer_all(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        while self.queue and not self.closing:
            request, keep_alive = self.queue.pop(0)
            try:
                response = await self.owner.handle(request)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("admin %s %s failed", request.method, request.path)
                response = text_response(500)
            self._send(request, response, keep_alive)
        self.task = None
        self._arm_idle()

    def _send(self, request: Request, response: Response, keep_alive: bool) -> None:
        if self.closing or self.transport is None:
            return
        self._write(response, keep_alive, with_body=request.method != "HEAD")

    def _refuse(self, status: int) -> None:
        if not self.closing and self.transport is not None:
            self._write(text_response(status), keep_alive=False, with_body=True)
        self.closing = True

    def _write(self, response: Response, keep_alive: bool, with_body: bool) -> None:
        assert self.transport is not None
        lines = [f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}"]
        lines += [f"{name}: {value}" for name, value in response.headers.items()]
        lines.append(f"Content-Length: {len(response.body)}")
        if not keep_alive:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.transport.write(head + response.body if with_body else head)
        if not keep_alive:
            self.closing = True
            self.transport.close()

    def _arm_idle(self) -> None:
        if self.closing:
            return
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(KEEP_ALIVE, self.abort)
