"""Reading a health check's answer (balancer/health.py): the final status, or None for no HTTP."""

from __future__ import annotations

import asyncio

import pytest

from balancer.health import _final_status


@pytest.mark.parametrize("answer, status", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200),
    (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 503 Busy\r\n\r\n", 503),
    (b"HTTP/1.0 302 Found\r\nLocation: /x\r\n\r\n", 302),
    (b"SSH-2.0-OpenSSH_9.6\r\n", None),
    (b"HTTP/1.1 abc\r\n\r\n", None),
    (b"", None),
    (b"HTTP/1.1 200 " + b"x" * 70_000 + b"\r\n\r\n", None),
])
async def test_final_status(answer: bytes, status: int | None) -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(answer)
    reader.feed_eof()
    assert await _final_status(reader) == status
