"""One public listener: its socket, its player connections and their counts.

At `limits.max_connections` the listener stops accepting (the kernel backlog holds new
connections until a slot frees), as HAProxy's `maxconn` does, instead of accepting and failing.
A slot is taken at accept, not when the connection is set up: a PROXY header or a TLS handshake
still under way holds one too, or a burst could be accepted far past the limit.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Callable, Protocol

from .config import Address, ListenerConfig
from .tasks import spawn
from .http.errors import REJECT_REASON
from .http.proxy_protocol import ProxyHeader, ProxyProtocolError, parse_proxy_header

if TYPE_CHECKING:
    from .runtime import RuntimeRef

log = logging.getLogger("balancer.listener")

BACKLOG = 4096
# Bytes looked at per read while a PROXY header arrives (a v1 line is at most 107; v2 with TLVs
# is usually a few hundred).
PROXY_PEEK = 4096


def bind_listener(address: Address, port: int | None = None, exclusive: bool = False) -> socket.socket:
    """A listening socket on `address` (`port` overrides its port: the workers' sockets share
    the port the first one got). `exclusive`: refuse a port some other process already listens
    on, which SO_REUSEPORT alone would silently share."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    if exclusive and address.port:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address.host, address.port))  # OSError: address already in use
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Always: workers share a port this way, and a reload that re-opens a listener binds
    # its new socket before the old one stops accepting.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((address.host, address.port if port is None else port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


class Connection(Protocol):
    """What the listener needs of a player's connection (balancer.http.client_side builds
    them): whether it is busy, and closing it."""

    exchange: object | None  # the request in progress
    tunnel: object | None  # a WebSocket being relayed

    def close(self) -> None: ...


# Builds one accepted connection's protocol from its listener and the client address a PROXY
# header carried (None without one). The server is handed it, so that it never imports the HTTP
# layer it serves (docs/architecture.md).
ProtocolFactory = Callable[["ListenerServer", "str | None"], Connection]


class ListenerServer:
    """Accepts with its own loop (sock_accept + connect_accepted_socket) so that it can stop
    accepting at max_connections and leave the rest in the kernel backlog."""

    def __init__(self, config: ListenerConfig, runtime: RuntimeRef,
                 loop: asyncio.AbstractEventLoop, protocol: ProtocolFactory,
                 ssl_context: ssl.SSLContext | None = None, reuse_port: bool = False) -> None:
        self.config = config
        self.name = config.name
        self.runtime = runtime
        self.loop = loop
        self.protocol = protocol
        self.ssl_context = ssl_context
        self.reuse_port = reuse_port
        self.connections: set[Connection] = set()
        self.sock: socket.socket | None = None
        self._accept_task: asyncio.Task | None = None
        self._room = asyncio.Event()
        self._room.set()
        self.slots = 0  # accepted connections not yet closed, set up or not
        # HTTP/2: by ALPN on TLS, by its connection preface (prior knowledge) on cleartext.
        self.http2_alpn = config.http2 and ssl_context is not None
        self.http2_prior_knowledge = config.http2 and ssl_context is None

    async def start(self, sock: socket.socket | None = None, exclusive: bool = False) -> None:
        self.sock = sock if sock is not None else bind_listener(self.config.address, exclusive=exclusive)
        stats = self.runtime.current.stats
        # Series exist from the start (at 0), so rate() and alerts see them before the first event.
        stats.connections.setdefault(self.name, 0)
        stats.connection_limit_reached.setdefault(self.name, 0)
        self._accept_task = self.loop.create_task(self._accept_loop(self.sock))

    def use_tls(self, config: ListenerConfig, ssl_context: ssl.SSLContext | None) -> None:
        """A reload that kept this listener's socket: connections accepted from now on get the
        new TLS context (renewed certificates); open ones keep the session they have."""
        self.config = config
        self.ssl_context = ssl_context

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1] if self.sock is not None else 0

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = self.loop
        while True:
            await self._room.wait()
            try:
                conn, _ = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("listener %s: accept failed: %s", self.name, exc)
                await asyncio.sleep(0.1)
                continue
            self._take_slot()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            spawn(self._serve(conn))

    def _take_slot(self) -> None:
        self.slots += 1
        if self.slots >= self.runtime.current.limits.max_connections:
            self._room.clear()
            stats = self.runtime.current.stats
            stats.connection_limit_reached[self.name] = stats.connection_limit_reached.get(self.name, 0) + 1
            log.warning("listener %s: max_connections reached; new connections wait in the backlog",
                        self.name)

    def _free_slot(self) -> None:
        self.slots -= 1
        if not self._room.is_set() and self.slots < self.runtime.current.limits.max_connections:
            self._room.set()

    async def _serve(self, conn: socket.socket) -> None:
        try:
            client_ip = await self._proxied_client(conn) if self.config.proxy_protocol else None
            await self.loop.connect_accepted_socket(
                lambda: self.protocol(self, client_ip), conn, ssl=self.ssl_context,
                ssl_handshake_timeout=self.runtime.current.limits.header_timeout if self.ssl_context else None)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ProxyProtocolError) as exc:
            log.debug("listener %s: connection setup failed: %s", self.name, exc)
            conn.close()
            self._free_slot()
        except BaseException:
            conn.close()
            self._free_slot()
            raise

    async def _proxied_client(self, conn: socket.socket) -> str | None:
        """On a `proxy_protocol` listener: the client address a trusted peer's PROXY header
        carries (None when it carries none, e.g. v2 LOCAL: the peer itself is the client).

        The header is read off the raw socket before any transport exists, because it comes
        before the TLS handshake on TLS listeners. A trusted peer must send one; a missing,
        invalid or late header raises and the connection is closed. An untrusted peer is
        served as it is, from its own address: a PROXY header it sends is never believed (the
        request reader refuses it as malformed, the TLS handshake fails on it)."""
        runtime = self.runtime.current
        if not runtime.is_trusted(conn.getpeername()[0]):
            return None
        async with asyncio.timeout(runtime.limits.header_timeout):
            header = await read_proxy_header(self.loop, conn)
        return header.source[0] if header.source is not None else None

    def speak_http2(self, conn: Connection, transport: asyncio.Transport, received: bytes) -> None:
        """Hand a player's connection over to HTTP/2: ALPN chose h2, or the preface came."""
        from .http.http2 import Http2Connection

        if conn in self.connections:  # prior knowledge: counted already as HTTP/1.1
            self.connections.discard(conn)
            stats = self.runtime.current.stats
            stats.connections[self.name] = stats.connections.get(self.name, 1) - 1
        h2conn = Http2Connection(self, conn.client_ip, conn.scheme)
        transport.set_protocol(h2conn)  # type: ignore[arg-type]
        h2conn.connection_made(transport, received)

    def connection_opened(self, conn: Connection) -> None:
        self.connections.add(conn)
        stats = self.runtime.current.stats
        stats.connections[self.name] = stats.connections.get(self.name, 0) + 1

    def connection_closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        stats = self.runtime.current.stats
        stats.connections[self.name] = stats.connections.get(self.name, 1) - 1
        self._free_slot()

    def count_rejected(self, reason: str) -> None:
        self.runtime.current.stats.reject(self.name, reason)

    def count_rejected_status(self, status: int) -> None:
        reason = REJECT_REASON.get(status)
        if reason is not None:
            self.count_rejected(reason)

    async def stop_accepting(self) -> None:
        task = self._accept_task
        self._accept_task = None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for conn in list(self.connections):
            drain = getattr(conn, "drain", None)
            if drain is not None:  # HTTP/2: GOAWAY, its open streams finish
                drain()

    def close_idle(self) -> None:
        """At shutdown: close connections that are between requests."""
        for conn in list(self.connections):
            if conn.exchange is None and conn.tunnel is None:
                conn.close()

    def busy(self) -> bool:
        return any(c.exchange is not None or c.tunnel is not None for c in self.connections)


async def read_proxy_header(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> ProxyHeader:
    """Take exactly the PROXY header off `conn`, however it is split across packets.

    Bytes are peeked first and only the header's own are consumed, so what follows it (an
    HTTP request, a TLS ClientHello) stays in the socket for the transport to read."""
    taken = b""
    while True:
        await _readable(loop, conn)
        try:
            peeked = conn.recv(PROXY_PEEK, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue
        if not peeked:
            raise ConnectionResetError("connection closed before the PROXY header ended")
        header = parse_proxy_header(taken + peeked)
        if header is None:
            taken += conn.recv(len(peeked))  # incomplete: every byte so far is the header's
            continue
        rest = header.length - len(taken)
        if len(conn.recv(rest)) != rest:  # already buffered (peeked), so all of it arrives
            raise ProxyProtocolError("PROXY header shorter than peeked")
        return header


async def _readable(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(conn.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(conn.fileno())
