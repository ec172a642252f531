"""Header rules for forwarding: hop-by-hop removal, X-Forwarded-*, request ids.

RFC 9110 §7.6.1: `Connection` and every header it names are for one hop only. We strip the
headers that `Connection` lists *before* adding our own X-Forwarded-* and X-Client-Region, so a
client cannot make the balancer delete what it adds ("Connection: X-Forwarded-For").
"""

from __future__ import annotations

import re
from random import getrandbits

# Always hop-by-hop (RFC 9110 §7.6.1 plus the de-facto Proxy-Connection and Keep-Alive, and
# HTTP2-Settings, which RFC 7540 §3.2.1 makes connection-specific: an h2c upgrade attempt must
# not reach a backend that might honour it).
HOP_BY_HOP: frozenset[bytes] = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"http2-settings",
})

# Headers the balancer sets itself towards the backend; a client's copies are replaced.
OWN_REQUEST_HEADERS: frozenset[bytes] = frozenset({
    b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id", b"x-client-region",
})

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")


def request_id_from(value: bytes | None) -> str:
    """Keep a well-formed incoming X-Request-Id (1-128 of A-Za-z0-9._-), else make a UUID4."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value.decode("ascii")
    return new_request_id()


# RFC 9562 §5.4 version and variant bits of a UUIDv4, placed in a 128-bit integer.
_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_V4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_request_id() -> str:
    """A random UUIDv4 string. A request id must be unique, not secret, so the Mersenne
    Twister serves: uuid.uuid4() reads os.urandom (a system call) on every request."""
    h = "%032x" % (getrandbits(128) & _V4_CLEAR | _V4_SET)
    return "-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


# Towards the backend we drop hop-by-hop headers and a client's copies of our own headers.
NOT_FORWARDED: frozenset[bytes] = HOP_BY_HOP | OWN_REQUEST_HEADERS | {b"x-forwarded-for"}

_WITH_TOKENS: dict[tuple[frozenset[bytes], bytes], frozenset[bytes]] = {}


def hop_by_hop_with(connection: bytes, base: frozenset[bytes] = HOP_BY_HOP) -> frozenset[bytes]:
    """`base` plus the names a Connection header lists. Cached (bounded): peers send the same
    few values ("keep-alive", "close", "Upgrade") over and over."""
    key = (base, connection)
    found = _WITH_TOKENS.get(key)
    if found is None:
        found = base | connection_tokens(connection)
        if len(_WITH_TOKENS) > 1024:
            _WITH_TOKENS.clear()
        _WITH_TOKENS[key] = found
    return found


def connection_tokens(value: bytes) -> set[bytes]:
    """The header names listed in a Connection header value, lower-cased."""
    return {token.strip().lower() for token in value.split(b",") if token.strip()}


def forwarded_for(existing: bytes | None, peer_ip: str, peer_trusted: bool) -> bytes:
    """X-Forwarded-For: append to a trusted peer's chain, replace an untrusted one's."""
    if existing and peer_trusted:
        return existing + b", " + peer_ip.encode()
    return peer_ip.encode()
