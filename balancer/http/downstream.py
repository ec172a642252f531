"""The player's side of one exchange, as the exchange sees it.

An exchange (balancer/http/exchange.py) routes a request, picks a backend and relays the
answer; how that answer is framed for the player is not its business. It talks to a
`Downstream`: an HTTP/1.1 connection (`ClientConnection`, which frames heads, chunks and
`Connection: close`) or an HTTP/2 stream (`Http2Stream`: HEADERS and DATA frames, windows).

The exchange hands over what HTTP means (a status, header fields, body bytes, the end) and
reads a few facts about the player; it never writes wire bytes itself. The class below is the
whole contract, declared once: the compiled build types it in downstream.pxd, so each call is
a C call through the method table whichever class implements it. The base does what is the
same for every player's side (counting refusals, framing a complete answer from head, body and
end); the methods whose body is only a docstring are each implementation's own, and
tests/unit/test_downstream.py checks that both implement every one of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..compiled import fields

if TYPE_CHECKING:
    from .exchange import Exchange

# (lower-case name, name as sent, value): the backend's response fields as the upstream
# reader hands them over.
Field = tuple[bytes, bytes, bytes]

_NOTHING_DROPPED: frozenset = frozenset()

# The methods each implementation defines itself (the rest are the base's, shared).
OWN_METHODS = (
    "send_interim", "send_head", "send_body", "end_response", "begin_batch", "flush",
    "pause_request_body", "resume_request_body", "start_tunnel", "exchange_finished",
    "close", "abort",
)


class Downstream:
    """Facts about the player (set by the implementation) and what an exchange may ask of it.

    The facts: `server` (the listener's server: counters, connection tracking), `loop` (the
    event loop the player is served on), `listener` (its listener's config), `client_ip` (the
    player's address, from a trusted PROXY header when there is one), `peer_trusted` (the peer
    may set X-Forwarded-For and the country header), `scheme` (b"http" or b"https"),
    `tls_version` ("TLSv1.3", or None: the access log's), `client_cert` (the player's verified
    TLS client certificate, a tls.ClientCertificate, or None: routes may match on it),
    `write_paused` (the player takes no more bytes for now: an exchange attaching a backend
    connection starts it paused). And one the exchange keeps here: `facts` (runtime.Facts, None
    until its first request chooses a backend), refilled for each request in turn."""

    __slots__ = fields(__name__, "Downstream")  # its .pxd declares them

    # -- the response: each call returns the bytes it put on the wire (the access log's) ----

    def send_interim(self, status: int, reason: bytes, headers: list[Field]) -> int:
        """A 1xx answer (100 Continue, 103 Early Hints) ahead of the final one; hop-by-hop
        fields are the implementation's to drop."""

    def send_head(self, status: int, reason: bytes, headers: list[Field], drop: frozenset,
                  extra: list | None, framed: bool, close: bool) -> int:
        """The final response head: `headers` less the lower-case names in `drop`, then the
        (name, value) pairs of `extra` (cookies the balancer issues). `framed`: the body's
        length is known (Content-Length, a bodiless status, a HEAD) or there is none; else the
        implementation frames it (chunks, or closing). `close`: the player's connection ends
        after this exchange. Status 101 turns the exchange into a tunnel."""

    def send_body(self, data: bytes) -> int:
        """Response body bytes (or, in a tunnel, the backend's bytes as they come)."""

    def end_response(self) -> int:
        """The response body is complete."""

    def send_answer(self, status: int, fields: list, body: bytes, close: bool, head_only: bool) -> int:
        """A complete answer made by the balancer or a plugin: (name, value) `fields`, which
        carry their own Content-Length, and `body` (left out after a HEAD). Framed here from
        head, body and end; an implementation that can send it in one piece does."""
        headers = [(name.lower(), name, value) for name, value in fields]
        sent = self.send_head(status, b"", headers, _NOTHING_DROPPED, None, True, close)
        if body and not head_only:
            sent += self.send_body(body)
        return sent + self.end_response()

    def begin_batch(self) -> None:
        """Hold what is sent until `flush`: a small response leaves in one write."""

    def flush(self) -> None:
        """What is held may leave now."""

    # -- flow ----------------------------------------------------------------------------------

    def pause_request_body(self) -> None:
        """Stop taking request body from the player (the backend is not keeping up)."""

    def resume_request_body(self) -> None:
        """The backend takes request body again."""

    # -- the exchange's life -------------------------------------------------------------------

    def start_tunnel(self, exchange: Exchange) -> None:
        """The backend switched protocols: bytes only, both ways, from now on."""

    def exchange_finished(self, exchange: Exchange) -> None:
        """The exchange is over (answered, or given up): the next one may be answered."""

    def count_rejected(self, reason: str) -> None:
        """Count a refused request under balancer_rejected_requests_total{reason}."""
        self.server.count_rejected(reason)

    def close(self) -> None:
        """End the player's side after what was sent (a tunnel's end, a drain)."""

    def abort(self) -> None:
        """End it at once: half a response cannot be mended, the player must see it broken."""
