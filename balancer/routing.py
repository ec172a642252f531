"""The route table: host / path prefix / method / header / client certificate matching,
compiled once per config.

First match wins (docs/configuration.md, `routes`). Host matching ignores the port; `*.example.com` matches
`a.example.com` but not `example.com`. A request whose method a route does not list simply
does not match that route.
"""

from __future__ import annotations

from .compiled import fields
from .config import RouteConfig


class Route:
    """A compiled route: its matcher plus what the data plane needs after a match."""

    __slots__ = fields(__name__, "Route")  # its .pxd declares them

    def __init__(self, config: RouteConfig) -> None:
        self.name = config.name
        self.pool_name = config.pool or ""  # "" when a split chooses the pool per player
        self.config = config
        self.plugins: tuple = ()  # plugin instances, set by the runtime that owns this route
        self.split = None  # balancer.split.Split, set by the runtime for a route with a split
        self.mirror = None  # balancer.mirror.Mirror, likewise for a route with a mirror
        match = config.match
        host = match.host
        self._host: str | None = None
        self._suffix: str | None = None
        if host is not None:
            if host.startswith("*."):
                self._suffix = host[1:]  # ".example.com"
            else:
                self._host = host
        self._prefix = match.path_prefix.encode()
        self._methods = frozenset(m.encode() for m in match.methods) if match.methods else None
        self._headers = tuple((name.encode(), value.encode()) for name, value in match.headers)
        self._cert = match.client_certificate  # ClientCertificateMatch or None

    def matches_host(self, host: str) -> bool:
        if self._host is not None:
            return host == self._host
        if self._suffix is not None:
            return host.endswith(self._suffix) and len(host) > len(self._suffix)
        return True

    def matches(self, host: str, path: bytes, method: bytes,
                headers: list[tuple[bytes, bytes, bytes]], cert: object = None) -> bool:
        """`cert`: the player's verified certificate (tls.ClientCertificate) or None."""
        if (self._host is not None or self._suffix is not None) and not self.matches_host(host):
            return False
        if not path.startswith(self._prefix):
            return False
        if self._methods is not None and method not in self._methods:
            return False
        for want_name, want_value in self._headers:
            for name, _, value in headers:
                if name == want_name and value == want_value:
                    break
            else:
                return False
        want = self._cert
        if want is not None:
            if cert is None:
                return False
            if want.subject is not None and cert.subject != want.subject:  # type: ignore[attr-defined]
                return False
            if want.fingerprint is not None and cert.fingerprint != want.fingerprint:  # type: ignore[attr-defined]
                return False
        return True


class RouteTable:
    __slots__ = fields(__name__, "RouteTable")  # its .pxd declares them

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        # For absolute-form targets: is this host one of ours at all? (no open proxy)
        self._hosts = {r._host for r in routes if r._host is not None}
        self._wildcards = tuple(r._suffix for r in routes if r._suffix is not None)

    def match(self, host: str, path: bytes, method: bytes,
              headers: list[tuple[bytes, bytes, bytes]], cert: object = None) -> Route | None:
        for route in self.routes:
            if route.matches(host, path, method, headers, cert):
                return route
        return None

    def serves_host(self, host: str) -> bool:
        """Is `host` named by some route? Host-less routes serve only origin-form requests:
        an absolute-form target must name a configured host, or the balancer would proxy
        to wherever a client points it."""
        if host in self._hosts:
            return True
        return any(host.endswith(s) and len(host) > len(s) for s in self._wildcards)
