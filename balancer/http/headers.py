"""Header rules for forwarding: hop-by-hop removal, X-Forwarded-*, request ids.

RFC 9110 §7.6.1: `Connection` and every header it names are for one hop only. We strip the
headers that `Connection` lists *before* adding our own X-Forwarded-* and X-Client-Region, so a
client cannot make the balancer delete what it adds ("Connection: X-Forwarded-For").
"""

from __future__ import annotations

import os
import re

from ..compiled import fields
from .uuid_text import *  # uuid4_texts: C in the compiled build (headers.pxd), else Python

# Always hop-by-hop (RFC 9110 §7.6.1 plus the de-facto Proxy-Connection and Keep-Alive, and
# HTTP2-Settings, which RFC 7540 §3.2.1 makes connection-specific: an h2c upgrade attempt must
# not reach a backend that might honour it).
HOP_BY_HOP: frozenset[bytes] = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"http2-settings",
})

# Headers the balancer sets itself towards the backend; a client's copies are replaced.
# (x-balancer-mirror marks shadow copies: a player must not pass a real bet off as one.)
# The client-certificate ones are removed even where no certificate is asked for: a backend
# trusts them as the balancer's word. So is Envoy's X-Forwarded-Client-Cert, which the
# balancer never sets but a backend written for Envoy would believe.
OWN_REQUEST_HEADERS: frozenset[bytes] = frozenset({
    b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id", b"x-client-region",
    b"x-balancer-mirror",
    b"x-client-cert-subject", b"x-client-cert-fingerprint", b"x-forwarded-client-cert",
})

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")


def request_id_from(value: bytes | None) -> str:
    """Keep a well-formed incoming X-Request-Id (1-128 of A-Za-z0-9._-), else make a UUID4."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value.decode("ascii")
    return new_request_id()


# Header names as sent -> lower case, one shared object per name. Peers send the same few
# names over and over: a hit saves an allocation per header, and the lower-case name's hash,
# which the set lookups after it need, is already computed. Bounded in count and length.
_LOWER_NAMES: dict[bytes, bytes] = {}
_LOWER_NAMES_MAX = 2048
_LOWER_NAME_MAX_LEN = 64


def lower_name(name: bytes) -> bytes:
    """`name.lower()`, remembered for the names seen most."""
    lname = _LOWER_NAMES.get(name)
    if lname is None:
        lname = name.lower()
        if len(_LOWER_NAMES) < _LOWER_NAMES_MAX and len(name) <= _LOWER_NAME_MAX_LEN:
            _LOWER_NAMES[name] = lname
    return lname


class HeaderNames:
    """Lower-case header names for one connection, remembered by position. A peer sends the
    same names in the same order in every message (a browser, a game client, a backend): the
    n-th name is compared with the n-th of the previous message, which is cheaper than hashing
    it for the shared cache. Call `restart` at each message's first header."""

    __slots__ = fields(__name__, "HeaderNames")  # its .pxd declares them

    def __init__(self) -> None:
        self._sent: list[bytes] = []  # names as sent, by position
        self._lower: list[bytes] = []
        self._at = 0

    def restart(self) -> None:
        self._at = 0

    def lower(self, name: bytes) -> bytes:
        at = self._at
        self._at = at + 1
        sent = self._sent
        if at < len(sent) and sent[at] == name:
            return self._lower[at]
        lname = lower_name(name)
        if len(name) <= _LOWER_NAME_MAX_LEN:  # a long name is never held by a connection
            if at < len(sent):
                sent[at] = name
                self._lower[at] = lname
            elif at < _NAMES_BY_POSITION:
                sent.append(name)
                self._lower.append(lname)
        return lname


_NAMES_BY_POSITION = 32  # per connection, at most


# Request ids are cut from one os.urandom call per batch, formatted for the whole batch at
# once: per request, an id is then one slice (docs/decisions.md).
_IDS_PER_BATCH = 128
_ID_LEN = 36  # 8-4-4-4-12 hex digits
_random_ids = ""
_random_at = 0  # next id ends here; 0 = batch used up


def _new_batch() -> str:
    """_IDS_PER_BATCH UUIDv4 strings back to back (uuid4_texts: C in the compiled build)."""
    return uuid4_texts(os.urandom(16 * _IDS_PER_BATCH))


def new_request_id() -> str:
    """A random UUIDv4 string (122 random bits from os.urandom). Event-loop thread only: the
    batch position is not guarded against another thread."""
    global _random_ids, _random_at
    at = _random_at
    if at == 0:
        _random_ids = _new_batch()
        at = len(_random_ids)
    at -= _ID_LEN
    _random_at = at
    return _random_ids[at:at + _ID_LEN]


def _forget_random_ids() -> None:
    """A forked worker must not hand out the ids its parent already drew."""
    global _random_at
    _random_at = 0


os.register_at_fork(after_in_child=_forget_random_ids)


# Towards the backend we drop hop-by-hop headers and a client's copies of our own headers.
NOT_FORWARDED: frozenset[bytes] = HOP_BY_HOP | OWN_REQUEST_HEADERS | {b"x-forwarded-for"}

_WITH_TOKENS: dict[tuple[frozenset[bytes], bytes], frozenset[bytes]] = {}


def hop_by_hop_with(connection: bytes, base: frozenset[bytes] = HOP_BY_HOP) -> frozenset[bytes]:
    """`base` plus the names a Connection header lists. Cached (bounded): peers send the same
    few values ("keep-alive", "close", "Upgrade") over and over."""
    if connection == b"keep-alive" and b"keep-alive" in base:  # what most peers send
        return base
    key = (base, connection)
    found = _WITH_TOKENS.get(key)
    if found is None:
        found = base | connection_tokens(connection)
        if len(_WITH_TOKENS) > 1024:
            _WITH_TOKENS.clear()
        _WITH_TOKENS[key] = found
    return found


def length_bits(names: frozenset[bytes]) -> int:
    """Bit n set when a name in `names` is n bytes long (all shorter than 64). Most header names
    are told apart from a small set's by their length alone: a shift and a mask, where the set
    lookup costs ~150 instructions a header in the compiled build."""
    bits = 0
    for name in names:
        if len(name) >= 64:
            raise ValueError(f"{name!r} is too long for a length mask")
        bits |= 1 << len(name)
    return bits


def connection_tokens(value: bytes) -> set[bytes]:
    """The header names listed in a Connection header value, lower-cased."""
    return {token.strip().lower() for token in value.split(b",") if token.strip()}


def forwarded_for(existing: bytes | None, peer_ip: str, peer_trusted: bool) -> bytes:
    """X-Forwarded-For: append to a trusted peer's chain, replace an untrusted one's."""
    if existing and peer_trusted:
        return existing + b", " + peer_ip.encode()
    return peer_ip.encode()
