"""Balancing strategies: pure selection among candidate backends, no I/O.

Each strategy is an object per pool (round robin keeps its smooth-weighted state there) with
`pick(candidates, now) -> Backend`. Candidates are never empty. Weights are *effective*
weights: slow start may scale a backend's configured weight down while it ramps up.
"""

from __future__ import annotations

import random
from math import exp
from random import random as uniform  # [0, 1): read per tie, without a module attribute lookup
from typing import Callable, Sequence

from ..compiled import fields
from ..pool import Backend

WeightFn = Callable[[Backend, float], float]


def static_weight(backend: Backend, now: float) -> float:
    return backend.weight


class _Weighted:
    """What every strategy is built with (how to read a backend's effective weight), and the
    simplest choice, which the others refine: at random, in proportion to weight."""

    __slots__ = fields(__name__, "_Weighted")  # its .pxd declares them

    def __init__(self, weight_of: WeightFn = static_weight) -> None:
        self.weight_of = weight_of

    def pick(self, candidates: Sequence[Backend], now: float) -> Backend:
        # Defined here, not only in the subclasses, so that the pool's runtime, which holds
        # any strategy as a _Weighted, calls pick through C, not by name (compiled build).
        if len(candidates) == 1:
            return candidates[0]
        weights = [self.weight_of(b, now) for b in candidates]
        return random.choices(candidates, weights)[0]


class LeastConn(_Weighted):
    """Fewest (active requests + open WebSockets) per unit of weight; ties broken at random,
    so that several balancer instances do not all pile onto the same first backend."""

    __slots__ = fields(__name__, "LeastConn")  # its .pxd declares them

    def pick(self, candidates: Sequence[Backend], now: float) -> Backend:
        if len(candidates) == 1:
            return candidates[0]
        weight_of = None if self.weight_of is static_weight else self.weight_of
        best = candidates[0]
        best_score = float("inf")
        ties = 0
        for b in candidates:
            weight = b.weight if weight_of is None else weight_of(b, now)
            score = (b.active_requests + b.websockets + 1) / weight
            if score < best_score:
                best_score = score
                best = b
                ties = 1
            elif score == best_score:
                # Reservoir sampling: each of the tied backends ends up chosen with equal
                # chance, without building a list per request.
                ties += 1
                if uniform() * ties < 1.0:
                    best = b
        return best


class RoundRobin(_Weighted):
    """Smooth weighted round robin (as nginx): each pick adds every weight to its backend's
    running total and takes the largest, which interleaves heavy backends instead of bursting."""

    __slots__ = fields(__name__, "RoundRobin")  # its .pxd declares them

    def __init__(self, weight_of: WeightFn = static_weight) -> None:
        super().__init__(weight_of)
        self._current: dict[str, float] = {}

    def pick(self, candidates: Sequence[Backend], now: float) -> Backend:
        if len(candidates) == 1:
            return candidates[0]
        current = self._current
        if len(current) > 4 * len(candidates) + 16:
            current.clear()  # forget backends that left long ago
        total = 0.0
        best: Backend | None = None
        best_value = float("-inf")
        for b in candidates:
            w = self.weight_of(b, now)
            total += w
            value = current.get(b.id, 0.0) + w
            current[b.id] = value
            if value > best_value:
                best_value = value
                best = b
        assert best is not None
        current[best.id] = best_value - total
        return best


class Random(_Weighted):
    """Weighted random choice (the base's pick)."""

    __slots__ = fields(__name__, "Random")  # its .pxd declares them


# A measured latency never counts as less than this (seconds): at zero, load would stop
# mattering, and one backend would take every request.
_LATENCY_FLOOR = 1e-6


class PeakEwma(_Weighted):
    """Peak-EWMA (as Finagle and Linkerd): each backend's cost is its response latency, a
    moving average that jumps to any slower answer at once and decays back over `decay`
    seconds, times (requests in flight + WebSockets + 1), divided by weight. Two candidates
    are drawn at random and the cheaper one wins (power of two choices): a slow backend gets
    little, yet never none, and instances acting on the same numbers do not herd onto one
    backend. The estimate also decays towards zero while nothing is measured, so a backend
    that was slow is tried again after a while instead of being starved forever.

    A backend never measured starts at the median of the candidates that were, not at zero
    (which would send it every request until its first answers came back)."""

    __slots__ = fields(__name__, "PeakEwma")  # its .pxd declares them

    def __init__(self, weight_of: WeightFn = static_weight, decay: float = 10.0) -> None:
        super().__init__(weight_of)
        self.decay = decay

    def pick(self, candidates: Sequence[Backend], now: float) -> Backend:
        count = len(candidates)
        if count == 1:
            return candidates[0]
        first = int(uniform() * count)
        second = int(uniform() * (count - 1))
        if second >= first:
            second += 1  # two different candidates, each pair equally likely
        a = candidates[first]
        b = candidates[second]
        if a.latency_at == 0.0 or b.latency_at == 0.0:
            self.seed(candidates, now)
        # `a` is already a random one of the two: a tie goes to it without another draw.
        return b if self.cost(b, now) < self.cost(a, now) else a

    def cost(self, backend: Backend, now: float) -> float:
        """What the pick compares: decayed latency x (load + 1) / effective weight."""
        latency = 1.0  # nothing measured anywhere yet: load and weight alone decide
        if backend.latency_at != 0.0:
            latency = backend.latency * exp((backend.latency_at - now) / self.decay)
            if latency < _LATENCY_FLOOR:
                latency = _LATENCY_FLOOR
        weight = backend.weight if self.weight_of is static_weight else self.weight_of(backend, now)
        return latency * (backend.active_requests + backend.websockets + 1) / weight

    def seed(self, candidates: Sequence[Backend], now: float) -> None:
        """Start never-measured candidates at the median latency of the measured ones."""
        decay = self.decay
        known = sorted([b.latency * exp((b.latency_at - now) / decay)
                        for b in candidates if b.latency_at != 0.0])
        if not known:
            return
        middle = len(known) // 2
        median = known[middle] if len(known) % 2 else (known[middle - 1] + known[middle]) / 2
        for b in candidates:
            if b.latency_at == 0.0:
                b.latency = median
                b.latency_at = now

    def observe(self, backend: Backend, seconds: float, now: float) -> None:
        """A response head arrived `seconds` after the request went to `backend`."""
        if seconds >= backend.latency or backend.latency_at == 0.0:
            backend.latency = seconds  # the peak: a slower answer counts in full at once
        else:
            # Time-based EWMA: the longer since the last answer, the more this one weighs.
            kept = exp((backend.latency_at - now) / self.decay) if now > backend.latency_at else 1.0
            backend.latency = backend.latency * kept + seconds * (1.0 - kept)
        backend.latency_at = now
