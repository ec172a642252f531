"""Country -> region: who may be served, and from where (docs/configuration.md `geo`;
docs/architecture.md, "Choosing a backend", steps 1 and 3).

The country comes from a header set by a trusted proxy in front (Cloudflare's CF-IPCountry by
default) or, failing that, from an optional MaxMind database looked up on the client address.
Everything the request path needs is precomputed here (country -> region, region -> fallback
order) and lookups are cached, so a request costs a few dict lookups.

A backend's region is matched by plain string equality with the configured region names.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from .addresses import parse_ip
from .compiled import fields
from .config import GeoConfig, IPNetwork

# Cloudflare: "XX" = no country known, "T1" = Tor exit node. Neither is a jurisdiction.
_UNKNOWN_COUNTRIES = frozenset({"XX", "T1"})
# Bounded caches: cleared when full rather than LRU-evicted, which costs nothing per hit.
_CACHE_MAX = 65536
_MISS = object()
# Country header values remembered: only trusted proxies' values get here, a few hundred at most.
_HEADER_CACHE_MAX = 1024


def _in_any(address: Any, networks: tuple[IPNetwork, ...]) -> bool:
    """Is `address` (None when unreadable) in one of `networks`?"""
    return address is not None and any(address in network for network in networks)


class HasRegion(Protocol):
    region: str | None


B = TypeVar("B", bound=HasRegion)


def normalize_country(value: str | bytes | None) -> str | None:
    """An upper-case ISO 3166-1 alpha-2 code, or None for anything else (including "XX", "T1").
    Accepts the raw header bytes as the parser hands them over."""
    if not value:
        return None
    code = (value.decode("latin-1") if isinstance(value, bytes) else value).strip().upper()
    if len(code) != 2 or not (code.isascii() and code.isalpha()) or code in _UNKNOWN_COUNTRIES:
        return None
    return code


class Geo:
    """Geo policy of one config: built once per (re)load, then read-only except its caches."""

    __slots__ = fields(__name__, "Geo")  # its .pxd declares them

    def __init__(self, config: GeoConfig, trusted_proxies: tuple[IPNetwork, ...]) -> None:
        # Lower-case bytes, as the parser hands header names over.
        self.header_name = config.country_header.lower().encode("latin-1")
        self.default_region = config.default_region
        self._trusted = tuple(trusted_proxies)
        self._pinned = frozenset(c.upper() for c in config.pinned_countries)
        self._blocked = frozenset(c.upper() for c in config.blocked_countries)
        self._country_region: dict[str, str] = {}
        for region, countries in config.regions.items():
            for country in countries:
                self._country_region.setdefault(country.upper(), region)
        self._orders = self._fallback_orders(config)
        self._pinned_orders: dict[str, tuple[str, ...]] = {}
        for country in self._pinned:
            region = self.region_of(country)
            if region is None:
                # Failing open here would serve a data-residency jurisdiction from anywhere.
                raise ValueError(f"pinned country {country} has no region and there is no default_region")
            self._pinned_orders[country] = (region,)
        self._trusted_cache: dict[str, bool] = {}
        self._db_cache: dict[str, str | None] = {}
        self._header_codes: dict[str | bytes, str | None] = {}  # country header value -> code
        # MODE_AUTO memory-maps the file and uses the C reader: a lookup is memory reads, no I/O
        # syscalls, and the cache above makes repeated players free.
        self._reader: Any = None
        self._reader_errors: tuple[type[Exception], ...] = (ValueError,)
        if config.database:
            import maxminddb  # here: its memory is paid only where a database is configured

            self._reader = maxminddb.open_database(config.database)
            self._reader_errors = (ValueError, maxminddb.InvalidDatabaseError)

    @staticmethod
    def _fallback_orders(config: GeoConfig) -> dict[str, tuple[str, ...]]:
        """region -> (region, fallback regions in order), without repeats."""
        orders: dict[str, tuple[str, ...]] = {}
        for region in {*config.regions, *config.fallback, *(v for f in config.fallback.values() for v in f)}:
            order = [region]
            for other in config.fallback.get(region, ()):
                if other not in order:
                    order.append(other)
            orders[region] = tuple(order)
        return orders

    def close(self) -> None:
        """Release the database (after a reload has replaced this object)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- where is the client -------------------------------------------------------------

    def is_trusted(self, peer_ip: str) -> bool:
        """Is the direct peer one of `trusted_proxies` (whose geo header we believe)?"""
        trusted = self._trusted_cache.get(peer_ip)
        if trusted is None:
            trusted = _in_any(parse_ip(peer_ip), self._trusted)
            if len(self._trusted_cache) >= _CACHE_MAX:
                self._trusted_cache.clear()
            self._trusted_cache[peer_ip] = trusted
        return trusted

    def country(
        self, peer_ip: str, header_value: str | bytes | None, client_ip: str | None = None,
        forwarded_for: bytes | None = None,
    ) -> str | None:
        """The client's country, or None when unknown.

        `peer_ip` is the direct TCP peer: only when it is trusted is the country header
        (str, or bytes as parsed) believed. `client_ip` is the address the balancer decided is the player's (from a
        trusted X-Forwarded-For or PROXY protocol); it defaults to `peer_ip` and is what the
        database is asked about, so a trusted proxy's own address is never geolocated.
        Without `client_ip`, a trusted peer's `forwarded_for` (X-Forwarded-For) names it.
        """
        if header_value is not None and self._trusted and self.is_trusted(peer_ip):
            # Few distinct values arrive (one per country): each is read once.
            code = self._header_codes.get(header_value, _MISS)
            if code is _MISS:
                code = normalize_country(header_value)
                if len(self._header_codes) >= _HEADER_CACHE_MAX:
                    self._header_codes.clear()
                self._header_codes[header_value] = code
            if code is not None:
                return code  # type: ignore[return-value]
        if self._reader is None:
            return None
        if client_ip is None:
            client_ip = peer_ip if forwarded_for is None else self.player_address(peer_ip, forwarded_for)
        return self._lookup(client_ip)

    def player_address(self, peer_ip: str, forwarded_for: bytes) -> str:
        """The address to geolocate behind trusted proxies: walking X-Forwarded-For from the
        right, the first address that no trusted proxy could have added (nginx's
        `real_ip_recursive on`). An untrusted peer's header is the player's own claim: ignored.
        """
        if not self._trusted or not self.is_trusted(peer_ip):
            return peer_ip
        entry = peer_ip
        for part in reversed(forwarded_for.decode("latin-1").split(",")):
            entry = part.strip()
            address = parse_ip(entry)
            if address is None:
                return ""  # a trusted proxy writes addresses: whatever this is, it is not one
            if not any(address in network for network in self._trusted):
                return entry
        return entry  # proxies all the way: the leftmost is the best there is

    def _lookup(self, ip: str) -> str | None:
        code = self._db_cache.get(ip, _MISS)
        if code is _MISS:
            code = self._read_database(ip)
            if len(self._db_cache) >= _CACHE_MAX:
                self._db_cache.clear()
            self._db_cache[ip] = code
        return code  # type: ignore[return-value]

    def _read_database(self, ip: str) -> str | None:
        address = parse_ip(ip)
        if address is None:
            return None
        try:
            record = self._reader.get(address)
        except self._reader_errors:
            # ValueError: an IPv6 address asked of an IPv4-only database.
            return None
        if not isinstance(record, dict):
            return None
        for key in ("country", "registered_country"):
            part = record.get(key)
            if isinstance(part, dict):
                code = part.get("iso_code")
                if isinstance(code, str):
                    code = normalize_country(code)
                    if code is not None:
                        return code
        return None

    # -- policy --------------------------------------------------------------------------

    def region_of(self, country: str | None) -> str | None:
        """The configured region of `country`, else `default_region` (None if there is none)."""
        if country is None:
            return self.default_region
        return self._country_region.get(country, self.default_region)

    def is_blocked(self, country: str | None) -> bool:
        return country is not None and country in self._blocked

    def is_pinned(self, country: str | None) -> bool:
        return country is not None and country in self._pinned

    def region_order(self, region: str | None, country: str | None) -> tuple[str, ...]:
        """Regions to look for backends in, best first.

        A pinned country gets only its own region, whatever `region` says, so that a caller's
        mistake cannot move a data-residency player abroad. An empty tuple means no region is
        known (unknown country and no default_region): no preference.
        """
        if country is not None and country in self._pinned:
            return self._pinned_orders[country]
        if region is None:
            return ()
        order = self._orders.get(region)
        return order if order is not None else (region,)

    @staticmethod
    def candidates(backends: list[B], region_order: tuple[str, ...]) -> list[B]:
        """The eligible backends of the first region in `region_order` that has any; empty if
        none has. With an empty order (no region known) every backend is a candidate and the
        input is returned as it is: callers must not mutate the result."""
        if not region_order:
            return backends
        for region in region_order:
            found = [b for b in backends if b.region == region]
            if found:
                return found
        return []
