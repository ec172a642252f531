"""The player's side of one exchange, as the exchange sees it.

An exchange (balancer/http/exchange.py) routes a request, picks a backend and relays the
answer; how that answer is framed for the player is not its business. It talks to a
`Downstream`: an HTTP/1.1 connection today (`ClientConnection`, which frames heads, chunks and
`Connection: close`), an HTTP/2 stream later (HEADERS and DATA frames, flow-control windows).

The exchange hands over what HTTP means (a status, header fields, body bytes, the end) and
reads a few facts about the player; it never writes wire bytes itself. The methods here are
the whole contract: the compiled build types them in downstream.pxd, so each call stays a C
call through the class's method table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .exchange import Exchange

# (lower-case name, name as sent, value): the backend's response fields as the upstream
# reader hands them over.
Field = tuple[bytes, bytes, bytes]


class Downstream:
    """Facts about the player (set by the implementation) and what an exchange may ask of it.

    The facts: `loop` (the event loop the player is served on), `listener` (its listener's
    config), `client_ip` (the player's address, from a trusted PROXY header when there is one),
    `peer_trusted` (the peer may set X-Forwarded-For and the country header), `scheme`
    (b"http" or b"https"), `tls_version` ("TLSv1.3", or None: the access log's), `client_cert`
    (the player's verified TLS client certificate, a tls.ClientCertificate, or None: routes
    may match on it), `write_paused` (the player takes no more bytes for now: an exchange
    attaching a backend connection starts it paused)."""

    __slots__ = ("loop", "listener", "client_ip", "peer_trusted", "scheme", "tls_version",
                 "client_cert", "write_paused")

    # -- the response: each call returns the bytes it put on the wire (the access log's) ----

    def send_interim(self, status: int, reason: bytes, headers: list[Field]) -> int:
        """A 1xx answer (100 Continue, 103 Early Hints) ahead of the final one; hop-by-hop
        fields are the implementation's to drop."""
        raise NotImplementedError

    def send_head(self, status: int, reason: bytes, headers: list[Field], drop: frozenset,
                  extra: list | None, framed: bool, close: bool) -> int:
        """The final response head: `headers` less the lower-case names in `drop`, then the
        (name, value) pairs of `extra` (cookies the balancer issues). `framed`: the body's
        length is known (Content-Length, a bodiless status, a HEAD) or there is none; else the
        implementation frames it (chunks, or closing). `close`: the player's connection ends
        after this exchange. Status 101 turns the exchange into a tunnel."""
        raise NotImplementedError

    def send_body(self, data: bytes) -> int:
        """Response body bytes (or, in a tunnel, the backend's bytes as they come)."""
        raise NotImplementedError

    def end_response(self) -> int:
        """The response body is complete."""
        raise NotImplementedError

    def send_answer(self, status: int, fields: list, body: bytes, close: bool, head_only: bool) -> int:
        """A complete answer made by the balancer or a plugin: (name, value) `fields`, which
        carry their own Content-Length, and `body` (left out after a HEAD)."""
        raise NotImplementedError

    def begin_batch(self) -> None:
        """Hold what is sent until `flush`: a small response leaves in one write."""
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    # -- flow ----------------------------------------------------------------------------------

    def pause_request_body(self) -> None:
        """Stop taking request body from the player (the backend is not keeping up)."""
        raise NotImplementedError

    def resume_request_body(self) -> None:
        raise NotImplementedError

    # -- the exchange's life -------------------------------------------------------------------

    def start_tunnel(self, exchange: Exchange) -> None:
        """The backend switched protocols: bytes only, both ways, from now on."""
        raise NotImplementedError

    def exchange_finished(self, exchange: Exchange) -> None:
        """The exchange is over (answered, or given up): the next one may be answered."""
        raise NotImplementedError

    def count_rejected(self, reason: str) -> None:
        """Count a refused request under balancer_rejected_requests_total{reason}."""
        raise NotImplementedError

    def close(self) -> None:
        """End the player's side after what was sent (a tunnel's end, a drain)."""
        raise NotImplementedError

    def abort(self) -> None:
        """End it at once: half a response cannot be mended, the player must see it broken."""
        raise NotImplementedError
