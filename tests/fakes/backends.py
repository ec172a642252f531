"""Real aiohttp backends for integration tests, on loopback ports chosen by the OS.

Each `Backend` counts what it received (per method and path), and its behaviour can be
switched while it runs: answer normally, answer 500, hang (for a time, or held until the test
releases it), reset connections, or stop.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import Counter

from aiohttp import WSMsgType, web


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Backend:
    def __init__(self, name: str, region: str | None = None, *, keepalive_timeout: float = 75.0,
                 announce_keepalive: bool = False, tls: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.region = region
        self.tls = tls  # serve HTTPS with this context
        # How long an idle keep-alive connection stays open (aiohttp's own default is 75 s),
        # and whether responses say so in `Keep-Alive: timeout=N` (as Node.js does).
        self.keepalive_timeout = keepalive_timeout
        self.announce_keepalive = announce_keepalive
        self.port = 0
        self.mode = "ok"  # ok | close | error500 | hang | hold | reset | status:<code>
        self.requests: Counter[tuple[str, str]] = Counter()
        self.seen_headers: list[dict[str, str]] = []
        self.bodies: list[bytes] = []
        self.hang_seconds = 30.0
        self.released = asyncio.Event()  # "hold": requests wait until the test sets this
        self.ws_sent = 0  # bytes /ws/flood/<size> has handed to its socket so far
        self.ws_open = 0  # WebSockets open right now
        self.tls_sessions_reused: list[bool | None] = []  # per request; None: plain HTTP
        self._runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def count(self, method: str | None = None, path: str | None = None) -> int:
        return sum(v for (m, p), v in self.requests.items()
                   if (method is None or m == method) and (path is None or p == path))

    async def start(self, port: int = 0) -> "Backend":
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ws/{tail:.*}", self._websocket)
        app.router.add_route("*", "/stream/{size}", self._stream)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        if self.announce_keepalive:
            app.on_response_prepare.append(self._announce_keepalive)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                     keepalive_timeout=self.keepalive_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port or 0, reuse_address=True,
                           ssl_context=self.tls)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _announce_keepalive(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Keep-Alive"] = f"timeout={self.keepalive_timeout:g}"

    async def _health(self, request: web.Request) -> web.Response:
        if self.mode in ("error500", "hang"):
            return web.Response(status=500, text="unhealthy")
        return web.Response(text="ok")

    async def _behave(self, request: web.Request) -> web.Response | None:
        if self.mode == "error500":
            return web.Response(status=500, text=f"{self.name} failing")
        if self.mode.startswith("status:"):
            return web.Response(status=int(self.mode[7:]), text=f"{self.name} {self.mode}")
        if self.mode == "hang":
            await asyncio.sleep(self.hang_seconds)
        if self.mode == "hold":
            await self.released.wait()
        if self.mode == "reset":
            transport = request.transport
            if transport is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                transport.abort()
            raise asyncio.CancelledError()
        return None

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests[(request.method, request.path)] += 1
        self.seen_headers.append(dict(request.headers))
        self.tls_sessions_reused.append(_session_reused(request))
        body = await request.read()
        self.bodies.append(body)
        answer = await self._behave(request)
        if answer is not None:
            return answer
        response = web.json_response({
            "backend": self.name, "region": self.region, "method": request.method,
            "path": request.path_qs, "body_bytes": len(body),
            "headers": dict(request.headers), "peer_cert": _peer_subject(request),
        }, headers={"X-Backend": self.name})
        if self.mode == "close":  # answer, then close: every request needs a new connection
            response.force_close()
        return response

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        """A chunked response of `size` bytes, written in 16 KiB pieces."""
        self.requests[(request.method, "/stream")] += 1
        size = int(request.match_info["size"])
        response = web.StreamResponse(headers={"X-Backend": self.name})
        response.enable_chunked_encoding()
        await response.prepare(request)
        piece = b"x" * 16384
        sent = 0
        while sent < size:
            n = min(len(piece), size - sent)
            await response.write(piece[:n])
            sent += n
        await response.write_eof()
        return response

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        self.requests[("WS", request.path)] += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws_open += 1
        try:
            if request.path.startswith("/ws/flood/"):
                # Push `size` bytes as fast as the connection takes them, 64 KiB a message.
                size = int(request.path.rsplit("/", 1)[1])
                piece = b"x" * 65536
                while self.ws_sent < size:
                    await ws.send_bytes(piece)  # waits while the socket's buffer is full
                    self.ws_sent += len(piece)
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await ws.send_str(f"{self.name}:{message.data}")
                elif message.type == WSMsgType.BINARY:
                    await ws.send_bytes(message.data)
        finally:
            self.ws_open -= 1
        return ws


def _session_reused(request: web.Request) -> bool | None:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    return ssl_object.session_reused if ssl_object is not None else None


def _peer_subject(request: web.Request) -> str | None:
    """The subject of the client certificate the caller (the balancer) presented, if any."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        return None
    return ",".join(f"{key}={value}" for rdn in cert["subject"] for key, value in rdn)
