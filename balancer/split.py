"""Canary splits: a route's players shared between pools by weight (`routes.N.split`).

Each player has a bucket, a number in [0, 1). The sides cover consecutive ranges of [0, 1) in
the order configured, each as wide as its share of the weights: with 95/5, bucket < 0.95 is
the first side and the rest the second. A player's bucket never changes, so

- a player stays on their side across requests and across balancer instances;
- changing the weights moves only the players whose bucket lies between the old and the new
  boundary: 95/5 -> 90/10 moves the players in [0.90, 0.95), 5% of them, and nobody else.

Where the bucket comes from (`split_on`):

- `cookie` (default): drawn at random on a player's first request and kept in a signed cookie
  (the sticky cookie's format and signing, balancer/sticky.py), which every instance with the
  same secret reads the same. The cookie is re-issued when half its `ttl` has passed, so a
  player who keeps playing keeps their side.
- `hash:<key>`: the stable hash of a request key (a header, cookie, query parameter or the
  client address, as `hash_on`), so no cookie is needed; a request without the key is hashed
  by its client address.

When the player's side has no eligible backend, the other sides are tried in order, largest
weight first (a side at weight 0 is left out), so players are served rather than refused;
their bucket is kept and they return to their side once it can serve them again. Players from
a pinned country never change sides (docs/decisions.md): they get the side's 503.

Nothing here does I/O.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Callable, Sequence

from .balance.consistent_hash import key_hash
from .config import RouteConfig, StickyConfig
from .sticky import StickyCookies, read_cookie

if TYPE_CHECKING:
    from .runtime import Choice, Facts, PoolRuntime

_BUCKET_SCALE = 2.0 ** 32  # buckets are kept as 32-bit integers in the cookie
_TOKEN_PAD = bytes(5)  # the cookie token is 9 bytes: the bucket's 4, then zeros


class Split:
    """The split of one route, for one config generation. `set_weights` changes it at run time
    (the admin API); a reload builds a new one from the file."""

    __slots__ = ("route", "sides", "weights", "_bounds", "_fallback", "_cookie", "_key",
                 "changed_at_runtime", "is_pinned")

    def __init__(self, config: RouteConfig, pools: dict[str, PoolRuntime],
                 secret: Callable[[str], bytes],
                 key_reader: Callable[[str], Callable[[Facts], bytes | None]],
                 is_pinned: Callable[[str | None], bool]) -> None:
        self.route = config.name
        self.sides: tuple[PoolRuntime, ...] = tuple(pools[side.pool] for side in config.split)
        self.weights: tuple[int, ...] = ()
        self._bounds: tuple[float, ...] = ()
        self._fallback: tuple[tuple[PoolRuntime, ...], ...] = ()
        self.changed_at_runtime = False
        self.is_pinned = is_pinned
        self._cookie: StickyCookies | None = None
        self._key: Callable[[Facts], bytes | None] | None = None
        if config.split_on == "cookie":
            c = config.split_cookie
            self._cookie = StickyCookies(StickyConfig(cookie=c.name, ttl=c.ttl, secret_env=c.secret_env),
                                         config.name, secret(c.secret_env))
        else:
            self._key = key_reader(config.split_on[len("hash:"):])
        self.set_weights(tuple(side.weight for side in config.split))

    # -- weights ------------------------------------------------------------------------------

    def set_weights(self, weights: Sequence[int]) -> None:
        """New weights, one per side in order (at least one above 0)."""
        total = sum(weights)
        if len(weights) != len(self.sides) or total <= 0 or min(weights) < 0:
            raise ValueError("one weight per side, none negative, not all 0")
        bounds = []
        running = 0
        for weight in weights:
            running += weight
            bounds.append(running / total)
        bounds[-1] = 1.0  # no bucket may fall past the last side through rounding
        self.weights = tuple(weights)
        self._bounds = tuple(bounds)
        by_weight = sorted(range(len(weights)), key=lambda i: -weights[i])
        self._fallback = tuple(
            tuple(self.sides[j] for j in by_weight if j != i and weights[j] > 0)
            for i in range(len(weights)))

    def side_of(self, bucket: float) -> int:
        """The index of the side whose range holds `bucket`."""
        bounds = self._bounds
        for index in range(len(bounds)):
            if bucket < bounds[index]:
                return index
        return len(bounds) - 1

    def describe(self) -> list[dict]:
        return [{"pool": pool.name, "weight": weight} for pool, weight in zip(self.sides, self.weights)]

    # -- choosing -------------------------------------------------------------------------------

    def choose(self, facts: Facts) -> Choice:
        """Choose the player's side and a backend in it. The choice names the side that serves
        (`pool`) and carries the split cookie when the player's is new or renewed."""
        bucket, cookie = self.bucket(facts)
        index = self.side_of(bucket)
        choice = self.sides[index].choose(facts)
        if choice.backend is None and choice.no_backend and not self.is_pinned(facts.country):
            for other in self._fallback[index]:
                alternative = other.choose(facts)
                if alternative.backend is not None:
                    choice = alternative
                    break
        choice.split_cookie = cookie
        return choice

    def bucket(self, facts: Facts) -> tuple[float, bytes | None]:
        """The player's bucket, and the split cookie to issue (None: theirs is still good)."""
        cookies = self._cookie
        if cookies is None:
            key = self._key(facts)  # type: ignore[misc]
            if key is None:
                key = facts.client_ip.encode()
            return (key_hash(key) >> 32) / _BUCKET_SCALE, None
        now = time.time()
        value = read_cookie(facts.head.cookie, cookies.name)
        known = cookies.verified(value, now) if value is not None else None
        if known is not None:
            number = int.from_bytes(known[0][:4], "big")
            if known[1] - now > cookies.ttl / 2:
                return number / _BUCKET_SCALE, None
        else:
            number = int(random.random() * _BUCKET_SCALE)
        cookie = cookies.set_cookie_header(
            cookies.encode_token(number.to_bytes(4, "big") + _TOKEN_PAD, now), facts.https)
        return number / _BUCKET_SCALE, cookie
