"""The configuration's schema: frozen dataclasses, one per section, with their defaults.

Every key is documented in docs/configuration.md. Every field has the documented default, so a
minimal config is a listener, a route and a pool. Durations are seconds as floats; addresses are
already split into host and port.

Reading and validating a YAML file is balancer/config_file.py, which may import plugins to
check their settings; this module imports nothing of the balancer, so every layer may use it.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Literal, Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

BalanceName = Literal["least_conn", "round_robin", "random", "consistent_hash", "ewma"]
OnFailure = Literal["rebalance", "fail"]
# What a retry may be triggered by (docs/configuration.md, `retries.on`).
RetryCondition = Literal["connect_failure", "reset", "timeout", "502", "503", "504"]
# Whether a listener asks players for a certificate (absent: it does not ask).
ClientCertificateMode = Literal["required", "optional"]


class ConfigError(Exception):
    """A config that cannot be used. `errors` holds every problem as (dotted path, message)."""

    def __init__(self, source: str, errors: list[tuple[str, str]]) -> None:
        self.source = source
        self.errors = errors
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.source}: {path}: {message}" for path, message in self.errors]


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    certificate: str
    key: str
    # server name (exact or "*.example.com") -> (certificate, key); the default pair serves the rest
    sni: tuple[tuple[str, str, str], ...] = ()
    # Client certificates (mTLS): verified against this CA bundle when asked for.
    client_ca: str | None = None
    client_certificate: ClientCertificateMode | None = None


@dataclass(frozen=True, slots=True)
class UpstreamTlsConfig:
    """TLS from the balancer to a pool's backends."""

    ca: str | None = None  # None: the system's CAs
    server_name: str | None = None  # None: the backend's host
    certificate: str | None = None  # client certificate for mTLS, with `key`
    key: str | None = None
    verify: bool = True


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    address: Address
    tls: TlsConfig | None = None
    proxy_protocol: bool = False
    # HTTP/2 for players: ALPN h2 on TLS (default on), prior knowledge (h2c) on cleartext.
    http2: bool = False


@dataclass(frozen=True, slots=True)
class AdminConfig:
    address: Address = Address("127.0.0.1", 9901)
    token_env: str = "BALANCER_ADMIN_TOKEN"


@dataclass(frozen=True, slots=True)
class Limits:
    max_url_bytes: int = 8192
    max_header_bytes: int = 16384
    # A backend's response head (status line and headers) longer than this is a 502.
    max_response_header_bytes: int = 65536
    max_header_count: int = 100
    max_body_bytes: int = 10 * 1024 * 1024
    header_timeout: float = 10.0
    client_idle_timeout: float = 60.0
    max_connections: int = 20000
    # A request body slower than this (bytes/s, averaged after the first second) gets 408.
    min_body_rate: int = 1024
    # Streams one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    max_concurrent_streams: int = 100


@dataclass(frozen=True, slots=True)
class GeoConfig:
    country_header: str = "CF-IPCountry"
    database: str | None = None
    regions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    fallback: dict[str, tuple[str, ...]] = field(default_factory=dict)
    default_region: str | None = None
    pinned_countries: frozenset[str] = frozenset()
    blocked_countries: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ConsulCheck:
    http: str = "/healthz"
    interval: float = 10.0


@dataclass(frozen=True, slots=True)
class ConsulRegister:
    service: str
    check: ConsulCheck = ConsulCheck()


@dataclass(frozen=True, slots=True)
class ConsulConfig:
    address: str = "http://127.0.0.1:8500"
    token_env: str = "CONSUL_HTTP_TOKEN"
    datacenter: str | None = None
    wait: float = 30.0
    register: ConsulRegister | None = None


@dataclass(frozen=True, slots=True)
class PluginConfig:
    name: str  # built-in name ("rate_limit") or dotted path ("package.module:Class")
    settings: object  # the plugin's own validated settings object


@dataclass(frozen=True, slots=True)
class MatchConfig:
    host: str | None = None
    path_prefix: str = "/"
    methods: frozenset[str] | None = None
    headers: tuple[tuple[str, str], ...] = ()  # (lower-case name, exact value)
    client_certificate: ClientCertificateMatch | None = None


@dataclass(frozen=True, slots=True)
class ClientCertificateMatch:
    """The player's verified certificate must have this subject and/or fingerprint."""

    subject: str | None = None  # RFC 4514, as in X-Client-Cert-Subject
    fingerprint: str | None = None  # SHA-256, lower-case hex without separators


@dataclass(frozen=True, slots=True)
class SplitSide:
    pool: str
    weight: int


@dataclass(frozen=True, slots=True)
class SplitCookieConfig:
    name: str = "LB_SPLIT"
    ttl: float = 24 * 3600.0
    secret_env: str = "STICKY_SECRET"


MIRROR_IN_FLIGHT = 100


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    pool: str
    percent: float
    max_in_flight: int = MIRROR_IN_FLIGHT  # copies under way per worker; past it, dropped


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    pool: str | None  # None when the route has a split
    match: MatchConfig = MatchConfig()
    plugins: tuple[PluginConfig, ...] = ()
    split: tuple[SplitSide, ...] = ()  # canary: the pools sharing the route's players
    split_on: str = "cookie"  # cookie | hash:header:NAME | hash:cookie:NAME | hash:query:NAME | hash:client_ip
    split_cookie: SplitCookieConfig = SplitCookieConfig()
    mirror: MirrorConfig | None = None

    @property
    def pools(self) -> tuple[str, ...]:
        """Every pool that may serve the route's players (not the mirror's)."""
        return tuple(side.pool for side in self.split) if self.split else (self.pool,)  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class StickyConfig:
    cookie: str
    ttl: float = 8 * 3600.0
    secret_env: str = "STICKY_SECRET"
    on_failure: OnFailure = "rebalance"


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    path: str | None = "/health"
    tcp: bool = False
    interval: float = 2.0
    timeout: float = 1.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    expect_status: tuple[int, int] = (200, 399)


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    consecutive_failures: int = 5
    base_ejection: float = 10.0
    max_ejection: float = 300.0
    max_ejected_percent: int = 50


@dataclass(frozen=True, slots=True)
class RetryConfig:
    attempts: int = 2
    on: frozenset[str] = frozenset({"connect_failure"})


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 2.0
    response: float = 30.0
    # Below the 5 s idle limit of Node.js, uvicorn and Apache (nginx: 75 s), with a margin:
    # a pooled connection is never reused as the backend closes it (docs/operations.md).
    idle: float = 4.0
    websocket_idle: float = 3600.0


@dataclass(frozen=True, slots=True)
class BackendConfig:
    id: str
    address: Address
    region: str | None = None
    weight: int = 1
    source: Literal["static", "consul"] = "static"


@dataclass(frozen=True, slots=True)
class ConsulDiscoveryConfig:
    service: str
    tags: tuple[str, ...] = ()
    region_from: str | None = None  # "meta:KEY" or "tag:PREFIX"
    weight_from: str | None = "weights"


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    balance: BalanceName = "least_conn"
    hash_on: str = "client_ip"  # header:NAME | cookie:NAME | query:NAME | client_ip
    hash_balance_factor: float = 0.0
    ewma_decay: float = 10.0  # balance: ewma: how fast a latency measurement fades
    geo: bool = False
    sticky: StickyConfig | None = None
    health_check: HealthCheckConfig | None = None
    outlier: OutlierConfig = OutlierConfig()
    slow_start: float = 0.0
    retries: RetryConfig = RetryConfig()
    timeouts: Timeouts = Timeouts()
    max_connections_per_backend: int = 2000
    drain_timeout: float = 600.0
    backends: tuple[BackendConfig, ...] = ()
    discovery: ConsulDiscoveryConfig | None = None
    tls: UpstreamTlsConfig | None = None


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    # stdout, stderr, an absolute file path, udp://host:port or unix:///path (syslog)
    path: str = "stdout"
    format: Literal["json", "combined"] = "json"
    sample: float = 1.0  # share of ok 1xx-4xx lines written; the others always are
    min_duration: float = 0.0  # seconds; ok lines faster than this are not written
    client_ip: Literal["full", "truncated"] = "full"


@dataclass(frozen=True, slots=True)
class Config:
    listeners: tuple[ListenerConfig, ...]
    routes: tuple[RouteConfig, ...]
    pools: dict[str, PoolConfig]
    admin: AdminConfig = AdminConfig()
    workers: int | Literal["auto"] = 1
    shutdown_timeout: float = 30.0
    trusted_proxies: tuple[IPNetwork, ...] = ()
    limits: Limits = Limits()
    geo: GeoConfig | None = None
    consul: ConsulConfig | None = None
    access_log: AccessLogConfig | None = None  # None: no access log
    log_format: Literal["text", "json"] = "text"  # the balancer's own log
    source: str = "<memory>"


def worker_count(config: Config) -> int:
    """How many worker processes `workers` asks for ("auto": one per CPU)."""
    if config.workers == "auto":
        return os.cpu_count() or 1
    return int(config.workers)
