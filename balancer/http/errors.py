"""The balancer's own answers: typed errors that carry their status, and their JSON bodies.

Like h11's `RemoteProtocolError(error_status_hint=...)`, an error raised while reading a request
knows the status to answer with, so the protocol class only has to catch and send.
"""

from __future__ import annotations

import json

REASONS: dict[int, bytes] = {
    100: b"Continue", 101: b"Switching Protocols",
    200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content",
    206: b"Partial Content", 301: b"Moved Permanently", 302: b"Found", 304: b"Not Modified",
    307: b"Temporary Redirect", 308: b"Permanent Redirect",
    400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 411: b"Length Required",
    413: b"Content Too Large", 414: b"URI Too Long", 417: b"Expectation Failed",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    451: b"Unavailable For Legal Reasons", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}

# Upstream failure kinds, as counted in balancer_upstream_errors_total{kind}.
CONNECT, RESET, TIMEOUT, PROTOCOL = "connect", "reset", "timeout", "protocol"
# Not a failure of the backend: a reused keep-alive connection closed before any answer (the
# backend ended it as idle while the request was on its way). Sent again on a fresh one.
STALE = "stale"

# Which rejection reason (metric label) a status of ours counts as.
REJECT_REASON: dict[int, str] = {
    400: "malformed", 411: "malformed", 501: "malformed", 505: "malformed",
    413: "too_large", 414: "too_large", 431: "too_large",
    408: "timeout", 451: "geo_blocked", 429: "rate_limited", 404: "no_route",
}


def reason_phrase(status: int) -> bytes:
    return REASONS.get(status, b"Unknown")


class RequestError(Exception):
    """A request the balancer refuses. The connection is closed after the answer when the
    framing can no longer be trusted (`close=True`), as RFC 9112 §11.2 advises for smuggling."""

    def __init__(self, status: int, message: str, close: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        # The refused request is known to be a HEAD: its answer has a head and no body.
        self.head_only = False


def head_of(response: bytes) -> bytes:
    """A complete response without its body: the answer to a HEAD (RFC 9110 §9.3.2), or the
    client would read the body as the next response."""
    return response[:response.index(b"\r\n\r\n") + 4]


def error_answer(
    status: int,
    message: str,
    request_id: str,
    extra_headers: tuple[tuple[bytes, bytes], ...] | list[tuple[bytes, bytes]] = (),
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The fields and small JSON body of one of the balancer's own error answers (docs/architecture.md, "Forwarding"),
    for any downstream to frame."""
    body = json.dumps({"error": message, "request_id": request_id}).encode()
    fields = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"x-request-id", request_id.encode()),
    ]
    fields.extend(extra_headers)
    return fields, body


def answer_bytes(status: int, fields: list[tuple[bytes, bytes]], body: bytes, close: bool,
                 head_only: bool = False) -> bytes:
    """A complete answer of the balancer's own as HTTP/1.1 bytes (no body after a HEAD:
    RFC 9110 §9.3.2, or the client would read it as the next response)."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status))]
    for name, value in fields:
        lines.append(name + b": " + value + b"\r\n")
    if close:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    if not head_only:
        lines.append(body)
    return b"".join(lines)


def error_response(
    status: int,
    message: str,
    request_id: str,
    close: bool,
    extra_headers: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A complete HTTP/1.1 error answer with the small JSON body."""
    fields, body = error_answer(status, message, request_id, extra_headers)
    return answer_bytes(status, fields, body, close)
