"""Byte-level HTTP/1.1 for tests that must see exactly what goes over the wire.

`read_response` reads one response from a stream (Content-Length, chunked, or close-delimited
framing) so a test can send pipelined or malformed requests on a raw socket. `RawBackend` is a
backend whose answers are fixed bytes and which records the request heads exactly as the
balancer sent them, for hop-by-hop and framing checks that aiohttp would normalise away.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]  # (lower-case name, value), in order
    body: bytes = b""
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def names(self) -> set[str]:
        return {key for key, _ in self.headers}

    def json(self) -> dict:
        return json.loads(self.body)


async def read_head(reader: asyncio.StreamReader, timeout: float = 5.0) -> RawResponse:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = raw[:-4].split(b"\r\n")
    _, status, *reason = lines[0].split(b" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")))
    return RawResponse(int(status), reason[0].decode("latin-1") if reason else "", headers, raw_head=raw)


async def read_response(reader: asyncio.StreamReader, timeout: float = 5.0,
                        head_request: bool = False) -> RawResponse:
    """One complete response; interim 1xx responses are skipped (see read_head for those)."""
    while True:
        response = await read_head(reader, timeout)
        if not 100 <= response.status < 200:
            break
    if head_request or response.status in (204, 304):
        return response
    length = response.header("content-length")
    if length is not None:
        response.body = await asyncio.wait_for(reader.readexactly(int(length)), timeout)
    elif (response.header("transfer-encoding") or "").lower() == "chunked":
        response.body = await asyncio.wait_for(read_chunked(reader), timeout)
    else:
        response.body = await asyncio.wait_for(reader.read(), timeout)
    return response


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def closed_after(reader: asyncio.StreamReader, timeout: float = 3.0) -> bool:
    """True if the peer closes the connection within `timeout` (any bytes before are ignored)."""
    try:
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass
    except asyncio.TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


@dataclass
class SeenRequest:
    request_line: bytes
    headers: list[tuple[str, str]]  # (lower-case name, value) exactly as received
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    def names(self) -> set[str]:
        return {key for key, _ in self.headers}


@dataclass
class RawBackend:
    """Answers every request on a keep-alive connection with `response` (fixed bytes)."""

    response: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    name: str = "raw"  # the backend id in configs written by conftest.pool_yaml
    region: str | None = None
    seen: list[SeenRequest] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> "RawBackend":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head[:-4].split(b"\r\n")
                headers = []
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    headers.append((name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")))
                seen = SeenRequest(lines[0], headers, b"")
                if seen.header("transfer-encoding") == "chunked":
                    seen.body = await read_chunked(reader)
                elif seen.header("content-length"):
                    seen.body = await reader.readexactly(int(seen.header("content-length") or 0))
                self.seen.append(seen)
                writer.write(self.response)
                await writer.drain()
        finally:
            writer.close()
