"""The request methods the balancer forwards, as one shared object per name.

A module of its own, importing nothing: the parser, the retry rules and the HTTP/2 side all
use these objects (a set lookup then matches by identity, and each hash is computed once), and
the compiled parser's modules import each other in a cycle (balancer/http/llhttp_parser.pyx):
a name read from a module still being imported would not be there yet.
"""

from __future__ import annotations

ALLOWED_METHODS: frozenset[bytes] = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"}
)
# A method as read -> the shared object of its name, for the methods above.
METHODS: dict[bytes, bytes] = {method: method for method in ALLOWED_METHODS}
