"""Raw-socket helpers for the edge tests: send bytes, learn whether the balancer closed, and
check that what came back is a sequence of well-formed HTTP/1.1 responses.

The parser here is deliberately strict and small: a test that must tell "a valid answer" from
"garbage" cannot lean on a lenient client library.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Sequence

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9]) [\x20-\x7e]*")
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x20-\x7e\x80-\xff\t]*?)[ \t]*")


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case name -> last value
    body: bytes = b""

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


class BadResponse(AssertionError):
    """The balancer sent bytes that are not a well-formed HTTP/1.1 response."""


@dataclass
class Raw:
    """What one raw connection saw: the bytes, and whether the balancer closed it."""

    data: bytes
    closed: bool

    def answers(self) -> list[Answer]:
        return parse_responses(self.data)


async def send_raw(port: int, data: bytes | list[bytes], timeout: float = 2.0,
                   pause: float = 0.0) -> Raw:
    """Send `data` (a list is sent piece by piece, `pause` apart) and read until the balancer
    closes or is quiet for `timeout`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    pieces = data if isinstance(data, list) else [data]
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
    except ConnectionError:
        pass  # the balancer may close before everything is sent; what it answered still counts
    return await read_until_close(reader, writer, timeout)


async def read_until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           timeout: float) -> Raw:
    chunks = []
    closed = False
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
    except asyncio.TimeoutError:
        pass
    except ConnectionError:
        closed = True  # reset by the balancer: closed, too
    writer.close()
    return Raw(b"".join(chunks), closed)


def parse_responses(data: bytes, head_requests: Sequence[bool] = ()) -> list[Answer]:
    """Every response in `data`; raises BadResponse unless `data` is whole responses only.
    `head_requests[i]` says the i-th final response answers a HEAD request (no body follows)."""
    answers = []
    pos = 0
    finals = 0
    while pos < len(data):
        head_only = finals < len(head_requests) and head_requests[finals]
        answer, pos = _parse_one(data, pos, head_only)
        answers.append(answer)
        finals += answer.status >= 200
    return answers


class Incomplete(BadResponse):
    """The bytes so far end inside a response (more may still arrive)."""


def _parse_one(data: bytes, pos: int, head_only: bool = False) -> tuple[Answer, int]:
    end = data.find(b"\r\n\r\n", pos)
    if end < 0:
        raise Incomplete(f"incomplete response head: {data[pos:pos + 200]!r}")
    lines = data[pos:end].split(b"\r\n")
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise BadResponse(f"bad status line: {lines[0]!r}")
    answer = Answer(int(status_line.group(1)))
    for line in lines[1:]:
        match = _FIELD.fullmatch(line)
        if match is None:
            raise BadResponse(f"bad header line: {line!r}")
        answer.headers[match.group(1).decode().lower()] = match.group(2).decode("latin-1")
    pos = end + 4
    if answer.status < 200 or answer.status in (204, 304) or head_only:
        return answer, pos
    if answer.headers.get("transfer-encoding", "").lower() == "chunked":
        return _chunked_body(answer, data, pos)
    length = answer.headers.get("content-length")
    if length is None:
        answer.body = data[pos:]  # close-delimited
        return answer, len(data)
    if not length.isdigit():
        raise BadResponse(f"bad content-length {length!r}")
    if pos + int(length) > len(data):
        raise Incomplete(f"content-length {length} but {len(data) - pos} body bytes")
    answer.body = data[pos:pos + int(length)]
    return answer, pos + int(length)


def _chunked_body(answer: Answer, data: bytes, pos: int) -> tuple[Answer, int]:
    body = []
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise Incomplete("incomplete chunk size line")
        size_text = data[pos:eol].split(b";", 1)[0]
        if not re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_text):
            raise BadResponse(f"bad chunk size {size_text!r}")
        size = int(size_text, 16)
        pos = eol + 2
        if size == 0:
            if len(data) < pos + 2:
                raise Incomplete("chunked body not ended yet")
            if data[pos:pos + 2] != b"\r\n":
                raise BadResponse("missing end of chunked body")
            answer.body = b"".join(body)
            return answer, pos + 2
        if len(data) < pos + size + 2:
            raise Incomplete("chunk data not complete yet")
        if data[pos + size:pos + size + 2] != b"\r\n":
            raise BadResponse("chunk data not followed by CRLF")
        body.append(data[pos:pos + size])
        pos += size + 2
