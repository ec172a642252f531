"""What one config generation compiles to: the route table, and per pool the choosing policy.

A reload builds a new `Runtime` and swaps it in one assignment; requests already running keep
the runtime they started with. `Pool` objects (backend state) outlive runtimes: the app keeps
them by name and hands them to each new generation, so health and counters carry over.

Choosing a backend follows docs/architecture.md ("Choosing a backend"): blocked (done before, in the exchange)
-> sticky -> geo -> balance -> 503 with Retry-After.
"""

from __future__ import annotations

import math
import time
from time import monotonic
from typing import TYPE_CHECKING, Callable, Sequence
from urllib.parse import parse_qsl

from . import outlier
from .addresses import parse_ip
from .balance import LeastConn, PeakEwma, Random, RoundRobin, static_weight
from .balance import consistent_hash
from .compiled import fields
from .config import Config, PoolConfig
from .geo import Geo
from .metrics import Stats
from .mirror import Mirror
from .pool import Backend, Pool
from .routing import Route, RouteTable
from .split import Split
from .sticky import StickyCookies, read_cookie, secret_from_env

if TYPE_CHECKING:
    from .access_log import AccessLog
    from .http.parser import RequestHead
    from .tls import BackendTls


# Why a pool had no backend to give (the 503's message; the access log tells them apart).
STICKY_GONE = "sticky backend unavailable"
NONE_IN_REGION = "no backend in your jurisdiction"
NONE_ELIGIBLE = "no eligible backend"


class Facts:
    """What choosing a backend may know about a request: plain values, no connection. An
    HTTP/1.1 exchange and an HTTP/2 stream build the same facts; tests build them by hand.

    On the request path one Facts serves the requests of one player's connection (or HTTP/2
    stream) in turn, `for_request` filling in each request's own: the player's side keeps it
    (`Downstream.facts`), so no object is made per request (docs/decisions.md)."""

    __slots__ = fields(__name__, "Facts")  # its .pxd declares them

    def __init__(self, head: RequestHead | None, client_ip: str, https: bool, country: str | None,
                 region: str | None, now: float) -> None:
        self.head = head  # the request's method, target and headers (cookie, hash_on keys)
        self.client_ip = client_ip
        self.https = https  # a cookie issued over https is marked Secure
        self.country = country  # from geo; None when unknown or geo is off
        self.region = region
        self.now = now  # time.monotonic(), for ejections and slow start

    def for_request(self, head: RequestHead, country: str | None, region: str | None,
                    now: float) -> Facts:
        """These facts, refilled for the next request of the same player's side: its head,
        country and region, and the time (the address and scheme stay)."""
        self.head = head
        self.country = country
        self.region = region
        self.now = now
        return self


class Choice:
    """What choosing decided: a backend, or the reason there is none (the 503's message) and
    its Retry-After; the cookies to issue with the answer; the pool (a split's side) that
    serves."""

    __slots__ = fields(__name__, "Choice")  # its .pxd declares them

    def __init__(self, backend: Backend | None, pool: PoolRuntime | None, reason: str = "",
                 retry_after: int | None = None, set_cookie: bytes | None = None,
                 no_backend: bool = False, sticky: str = "none") -> None:
        self.backend = backend
        self.pool = pool
        self.reason = reason
        self.retry_after = retry_after
        self.set_cookie = set_cookie  # the sticky cookie that pins the player (None: keep theirs)
        self.split_cookie: bytes | None = None  # a canary split's cookie, new or renewed
        # No backend because none was eligible (as opposed to a sticky player's backend being
        # unusable under on_failure: fail): a canary split may try its other side.
        self.no_backend = no_backend
        # What the sticky cookie did: none (no sticky config), hit, new (no valid cookie: one is
        # issued), rebalanced (its backend is unusable: a new one is issued), failed (503).
        self.sticky = sticky


class PoolRuntime:
    """The policy side of one pool for one config generation."""

    __slots__ = fields(__name__, "PoolRuntime")  # its .pxd declares them

    def __init__(self, pool: Pool, geo: Geo | None, sticky_secret: Callable[[str], bytes],
                 tls: BackendTls | None = None, config: PoolConfig | None = None) -> None:
        # `config`: this generation's settings. A reload compiles before the Pool object
        # (which outlives generations) takes them, so pool.config may still be the old ones.
        config = config or pool.config
        self.name = pool.name
        self.tls = tls  # TLS to this pool's backends, with this generation's files
        self.pool = pool
        self.config = config
        self.geo = geo
        weight_of = static_weight
        if config.slow_start > 0:
            slow_start = config.slow_start
            weight_of = lambda b, now: outlier.effective_weight(b, now, slow_start)
        if config.balance == "ewma":
            self.strategy = PeakEwma(weight_of, config.ewma_decay)
        else:
            self.strategy = {
                "least_conn": LeastConn, "round_robin": RoundRobin, "random": Random,
            }.get(config.balance, LeastConn)(weight_of)
        # The exchange reports response latencies only to a strategy that uses them.
        self.latency_aware = config.balance == "ewma"
        self._hash_key = hash_key_reader(config.hash_on) if config.balance == "consistent_hash" else None
        self.sticky = (StickyCookies(config.sticky, pool.name, sticky_secret(config.sticky.secret_env))
                       if config.sticky is not None else None)
        self._tokens: dict[bytes, str] = {}
        self._tokens_members: list[Backend] | None = None
        self.retry_statuses = frozenset(int(c) for c in config.retries.on if c.isdigit())
        timeouts = config.timeouts
        self.connect_timeout = timeouts.connect
        self.response_timeout = timeouts.response
        self.idle_timeout = timeouts.idle
        self.websocket_idle_timeout = timeouts.websocket_idle

    @property
    def retries_total(self) -> int:
        return self.pool.retries_total

    @retries_total.setter
    def retries_total(self, value: int) -> None:
        self.pool.retries_total = value

    # -- choosing ---------------------------------------------------------------------------

    def choose(self, facts: Facts) -> Choice:
        """Steps 2-4 of choosing a backend (docs/architecture.md). No I/O and no exchange: the
        answer says what to do (the backend, the cookie to issue, or why there is none)."""
        now = facts.now
        pool = self.pool
        geo = self.geo
        pinned = geo is not None and geo.is_pinned(facts.country)

        # 2. Sticky: a valid cookie naming a usable backend wins. A valid cookie whose backend
        # is gone, unusable, or (for a pinned country) abroad fails closed under `fail`.
        sticky = self.sticky
        sticky_result = "none"
        if sticky is not None:
            token = self._sticky_token(facts)
            sticky_result = "new"
            if token is not None:
                backend = self._backend_of(token)
                if (backend is not None and pool.is_usable(backend, now)
                        and (not pinned or self._in_region(backend, facts))):
                    return Choice(backend, self, sticky="hit")
                if sticky.fail_closed:
                    return Choice(None, self, STICKY_GONE, self._retry_after(now), sticky="failed")
                sticky_result = "rebalanced"

        # 3. Geo: the client's region, then its fallbacks; a pinned country never leaves.
        candidates = pool.eligible(now, allow_panic=not pinned)
        order = self._region_order(facts, pinned)
        if order:
            candidates = Geo.candidates(candidates, order)
        if not candidates:
            reason = NONE_IN_REGION if pinned else NONE_ELIGIBLE
            return Choice(None, self, reason, self._retry_after(now, order if pinned else ()),
                          no_backend=True, sticky=sticky_result)

        # 4. Balance.
        backend = self._balance(candidates, facts, now)
        return Choice(backend, self, set_cookie=self._new_cookie(backend, facts) if sticky is not None else None,
                      sticky=sticky_result)

    def choose_again(self, facts: Facts, tried: list[Backend], cookie_issued: bool,
                     sticky_result: str) -> Choice | None:
        """A different backend for a retry (none of `tried`), under the same geo rules; None if
        there is none. `cookie_issued`: the first choice issued a sticky cookie (a balanced pick
        always does); `sticky_result`: what the sticky cookie did then."""
        sticky = self.sticky
        if sticky is not None and sticky.fail_closed and not cookie_issued:
            # The player's cookie chose the failed backend: moving the game elsewhere is what
            # `on_failure: fail` forbids.
            return None
        now = facts.now
        geo = self.geo
        pinned = geo is not None and geo.is_pinned(facts.country)
        candidates = [b for b in self.pool.eligible(now, allow_panic=not pinned) if b not in tried]
        order = self._region_order(facts, pinned)
        if order:
            candidates = Geo.candidates(candidates, order)
        if not candidates:
            return None
        backend = self._balance(candidates, facts, now)
        if sticky is None:
            return Choice(backend, self, sticky=sticky_result)
        if sticky_result == "hit":
            sticky_result = "rebalanced"  # the player's game moves to another backend
        return Choice(backend, self, set_cookie=self._new_cookie(backend, facts), sticky=sticky_result)

    def _region_order(self, facts: Facts, pinned: bool) -> tuple[str, ...]:
        """Geo (step 3 of choosing a backend): the regions to choose in, best first; () when geo does not apply
        (the pool has no `geo: true` and the country is not pinned, or no region is known)."""
        geo = self.geo
        if geo is not None and (pinned or self.config.geo):
            return geo.region_order(facts.region, facts.country)
        return ()

    def _new_cookie(self, backend: Backend, facts: Facts) -> bytes:
        """The Set-Cookie value that pins the player to the backend just balanced to."""
        sticky = self.sticky
        return sticky.set_cookie_header(sticky.encode(backend.id, time.time()), facts.https)

    def _balance(self, candidates: Sequence[Backend], facts: Facts, now: float) -> Backend:
        if self._hash_key is not None:
            key = self._hash_key(facts)
            if key is not None:
                return consistent_hash.pick(candidates, key, self.config.hash_balance_factor)
        return self.strategy.pick(candidates, now)

    def _sticky_token(self, facts: Facts) -> bytes | None:
        """The backend token of the player's valid sticky cookie; None when there is none."""
        sticky = self.sticky
        assert sticky is not None
        cookie = facts.head.cookie
        if cookie is None:
            return None
        value = read_cookie(cookie, sticky.name)
        if value is None:
            return None
        return sticky.decode(value, time.time())  # None if forged, tampered or expired: as if absent

    def _backend_of(self, token: bytes) -> Backend | None:
        """The backend a valid token names, draining ones included; None when it is gone."""
        sticky = self.sticky
        assert sticky is not None
        members = self.pool.members
        if self._tokens_members is not members:  # the list is rebuilt on every change
            self._tokens = sticky.index(self.pool.backends)
            self._tokens_members = members
        backend_id = self._tokens.get(token)
        return self.pool.backends.get(backend_id) if backend_id is not None else None

    @staticmethod
    def _in_region(backend: Backend, facts: Facts) -> bool:
        return backend.region is not None and backend.region == facts.region

    def _retry_after(self, now: float, regions: tuple[str, ...] = ()) -> int:
        """Whole seconds until the earliest ejection ends, else 1 (docs/decisions.md). For a
        pinned player only ejections in the regions that may serve them count: an ejection
        abroad ending would not help them."""
        ends = [b.ejected_until for b in self.pool.members
                if b.ejected_until > now and (not regions or b.region in regions)]
        return max(1, math.ceil(min(ends) - now)) if ends else 1


def hash_key_reader(hash_on: str) -> Callable[[Facts], bytes | None]:
    """hash_on -> a function that finds the key of a request (None: no key, balance instead)."""
    kind, _, name = hash_on.partition(":")
    if kind == "header":
        lname = name.lower().encode()
        return lambda facts: facts.head.header(lname)
    if kind == "cookie":
        def from_cookie(facts: Facts) -> bytes | None:
            value = read_cookie(facts.head.cookie, name)
            return value.encode() if value is not None else None
        return from_cookie
    if kind == "query":
        def from_query(facts: Facts) -> bytes | None:
            target = facts.head.target
            q = target.find(b"?")
            if q < 0:
                return None
            for key, value in parse_qsl(target[q + 1:].decode("latin-1")):
                if key == name:
                    return value.encode()
            return None
        return from_query
    return lambda facts: facts.client_ip.encode()


class Runtime:
    """One config generation, compiled."""

    __slots__ = fields(__name__, "Runtime")  # its .pxd declares them

    def __init__(self, config: Config, pools: dict[str, Pool], stats: Stats,
                 sticky_secret: Callable[[str], bytes] = secret_from_env,
                 plugin_factory: Callable[[Route], tuple] | None = None,
                 access_log: AccessLog | None = None,
                 backend_tls: dict[str, BackendTls] | None = None) -> None:
        self.config = config
        self.stats = stats
        # The process's one access log (it outlives runtimes, so old requests still write).
        self.access_log = access_log
        self.limits = config.limits
        self.geo = Geo(config.geo, config.trusted_proxies) if config.geo is not None else None
        tls = backend_tls or {}
        self.pools = {name: PoolRuntime(pools[name], self.geo, sticky_secret, tls.get(name), pool_config)
                      for name, pool_config in config.pools.items()}
        routes = [Route(r) for r in config.routes]
        geo = self.geo
        is_pinned = geo.is_pinned if geo is not None else _nobody_pinned
        for route in routes:
            if plugin_factory is not None:
                route.plugins = plugin_factory(route)
            if route.config.split:
                route.split = Split(route.config, self.pools, sticky_secret, hash_key_reader, is_pinned)
            mirror = route.config.mirror
            if mirror is not None:
                route.mirror = Mirror(route.name, mirror, self.pools[mirror.pool], stats)
        self.routes = RouteTable(routes)
        self._trusted = config.trusted_proxies
        self._trusted_cache: dict[str, bool] = {}

    def is_trusted(self, ip: str) -> bool:
        """Is the direct peer one of `trusted_proxies`? Cached per address (bounded)."""
        trusted = self._trusted_cache.get(ip)
        if trusted is None:
            address = parse_ip(ip) if self._trusted else None
            trusted = address is not None and any([address in net for net in self._trusted])
            if len(self._trusted_cache) > 65536:
                self._trusted_cache.clear()
            self._trusted_cache[ip] = trusted
        return trusted

    def close(self) -> None:
        for route in self.routes.routes:
            if route.mirror is not None:
                route.mirror.close()
        if self.geo is not None:
            self.geo.close()


def _nobody_pinned(country: str | None) -> bool:
    return False


class RuntimeRef:
    """The runtime in force, swapped whole by a reload. Listeners and their connections hold
    this one object and read `current` per request: compiled, that is a field read, where
    asking the app for it was a call into interpreted code on every request."""

    __slots__ = fields(__name__, "RuntimeRef")  # its .pxd declares them

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime
