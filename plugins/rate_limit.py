"""`rate_limit`: a token bucket per client, player or session (docs/plugins.md).

    plugins:
      - rate_limit: {rate: 20/s, burst: 40, key: client_ip}

Every key (`client_ip`, `header:NAME` or `cookie:NAME`) has a bucket of `burst` tokens that
refills at `rate`; a request takes one token, and an empty bucket answers 429 with
`Retry-After` (whole seconds until a token is back). A request without the header or cookie
named by `key` is counted under its client address, so leaving the header out does not escape
the limit.

Memory is bounded: buckets are kept least recently used first, a bucket left alone for
`burst / rate` seconds is full again (the same as having none) and is dropped, and at most
`max_keys` buckets are kept (the least recently used go first; a dropped key starts again with
a full bucket). Buckets live in each worker process and for one config generation: with
`workers: N` each worker allows `rate`, and a reload starts every bucket full.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import OrderedDict
from operator import attrgetter
from dataclasses import dataclass
from typing import Callable

from balancer.compiled import fields
from balancer.grammar import TOKEN
from balancer.plugins import Plugin, PluginRequest, Response
from plugins._settings import Errors, header_name, positive_int, section, show

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m)\s*$")
_PER = {"s": 1.0, "m": 60.0}

DEFAULT_MAX_KEYS = 100_000
KEY_MAX = 64  # characters of a header or cookie value kept as is in a bucket key


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    per_second: float
    burst: int
    key: str  # client_ip | header:NAME | cookie:NAME
    max_keys: int = DEFAULT_MAX_KEYS


def parse_rate(raw: object) -> float | None:
    """ "20/s" -> 20.0, "600/m" -> 10.0 (tokens per second); None if not a rate."""
    match = _RATE.match(raw) if isinstance(raw, str) else None
    if match is None:
        return None
    per_second = float(match.group(1)) / _PER[match.group(2)]
    return per_second if per_second > 0 else None


def _short(value: str) -> str:
    """A header or cookie value as a bucket key. Values past KEY_MAX are hashed, so that
    `max_keys` buckets cost `max_keys` small keys even when clients send 16 KiB values."""
    if len(value) <= KEY_MAX:
        return value
    return hashlib.blake2b(value.encode("latin-1", "replace"), digest_size=16).hexdigest()


def _key_reader(key: str) -> Callable[[PluginRequest], str]:
    kind, _, name = key.partition(":")
    if kind == "header":
        def by_header(request: PluginRequest) -> str:
            value = request.headers.get(name)
            return "h:" + _short(value) if value else "ip:" + request.client_ip
        return by_header
    if kind == "cookie":
        def by_cookie(request: PluginRequest) -> str:
            value = request.cookie(name)
            return "c:" + _short(value) if value else "ip:" + request.client_ip
        return by_cookie
    return attrgetter("client_ip")


class Bucket:
    """One key's tokens and when it last took one (C doubles in the compiled build, so a request
    boxes no float)."""

    __slots__ = fields(__name__, "Bucket")  # its .pxd declares them

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last


class TokenBuckets:
    """The buckets of one route's plugin, least recently used first. Its own class (a C class
    in the compiled build: rate_limit.pxd) so that a request's arithmetic is on C doubles."""

    __slots__ = fields(__name__, "TokenBuckets")  # its .pxd declares them

    def __init__(self, settings: RateLimitSettings) -> None:
        self.rate = settings.per_second
        self.burst = float(settings.burst)
        self.max_keys = settings.max_keys
        # After this long untouched, a bucket is full again: dropping it changes no answer.
        self.refill_time = self.burst / self.rate
        self.buckets: OrderedDict[str, Bucket] = OrderedDict()
        self._get = self.buckets.get
        self._move_to_end = self.buckets.move_to_end
        # Every key an address: the address itself is the key (no string built per request).
        self.by_address = settings.key == "client_ip"
        self.key_of = _key_reader(settings.key)
        self.clock: Callable[[], float] = time.monotonic  # a test may set its own

    def take(self, request: PluginRequest) -> Response | None:
        """Take a token for the request's key: None, or the 429 to answer with."""
        key = request.client_ip if self.by_address else self.key_of(request)
        now = self.clock()
        bucket = self._get(key)
        if bucket is None:
            tokens = self.burst
            bucket = Bucket(tokens, now)
            self.buckets[key] = bucket
            self._expire(now)  # the map only grows here, so here is where it is kept small
        else:
            self._move_to_end(key)
            tokens = min(self.burst, bucket.tokens + (now - bucket.last) * self.rate)
        bucket.last = now
        if tokens >= 1.0:
            bucket.tokens = tokens - 1.0
            return None
        bucket.tokens = tokens
        # Whole seconds until one token is back (Retry-After is whole seconds).
        wait = max(1, math.ceil((1.0 - tokens) / self.rate))
        return Response(429, "rate limited", retry_after=wait)

    def _expire(self, now: float) -> None:
        """Drop buckets from the least recently used end: those full again, and any over the
        cap. Each call drops what earlier inserts left behind, so the cost per request is O(1)
        on average and never a sweep of the whole map."""
        buckets = self.buckets
        full_since = now - self.refill_time
        while buckets:
            oldest = next(iter(buckets))
            bucket = buckets[oldest]
            if len(buckets) <= self.max_keys and bucket.last > full_since:
                break
            del buckets[oldest]


def take_token(limiter: TokenBuckets, request: PluginRequest) -> Response | None:
    """The request hook's work: a C call to the typed buckets in the compiled build."""
    if request is None:  # the compiled build would read a field of None
        raise TypeError("a rate limit needs a PluginRequest")
    return limiter.take(request)


class RateLimit(Plugin):
    def __init__(self, settings: RateLimitSettings) -> None:
        super().__init__(settings)
        self.limiter = TokenBuckets(settings)
        self.burst = self.limiter.burst
        self.buckets = self.limiter.buckets  # key -> Bucket, least recently used first

    @property
    def clock(self) -> Callable[[], float]:
        return self.limiter.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:  # a test's own
        self.limiter.clock = clock

    def on_request(self, request: PluginRequest) -> Response | None:
        return take_token(self.limiter, request)

    @classmethod
    def parse_settings(cls, raw: object, path: str, errors: Errors) -> RateLimitSettings | None:
        settings = section(raw, path, errors, ("rate", "burst", "key", "max_keys"), required=("rate",))
        if settings is None:
            return None
        before = len(errors)
        per_second = None
        if "rate" in settings:
            per_second = parse_rate(settings["rate"])
            if per_second is None:
                errors.append((f"{path}.rate", "expected requests per second or minute like '20/s' "
                                               f"or '600/m', got {show(settings['rate'])}"))
        burst = positive_int(settings["burst"], f"{path}.burst", errors) if "burst" in settings else None
        if burst is None and per_second is not None:
            burst = max(1, math.ceil(per_second))  # default: one second's worth
        key = _parse_key(settings.get("key", "client_ip"), f"{path}.key", errors)
        max_keys = DEFAULT_MAX_KEYS
        if "max_keys" in settings:
            max_keys = positive_int(settings["max_keys"], f"{path}.max_keys", errors) or DEFAULT_MAX_KEYS
        if len(errors) > before or per_second is None or burst is None or key is None:
            return None
        return RateLimitSettings(per_second=per_second, burst=burst, key=key, max_keys=max_keys)


def _parse_key(raw: object, path: str, errors: Errors) -> str | None:
    if raw == "client_ip":
        return raw
    if isinstance(raw, str):
        kind, colon, name = raw.partition(":")
        if colon and kind == "header" and header_name(name, path, errors) is not None:
            return raw
        if colon and kind == "cookie" and TOKEN.fullmatch(name):  # a cookie name is a token
            return raw
        if colon and kind in ("header", "cookie"):
            if kind == "cookie":
                errors.append((path, f"expected a cookie name after 'cookie:', got {show(name)}"))
            return None
    errors.append((path, f"expected client_ip, header:NAME or cookie:NAME, got {show(raw)}"))
    return None


PLUGIN = RateLimit
