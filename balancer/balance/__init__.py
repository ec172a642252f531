"""Balancing strategies: pure selection among candidate backends, no I/O.

Each strategy is an object per pool (round robin keeps its smooth-weighted state there) with
`pick(candidates, now) -> Backend`. Candidates are never empty. Weights are *effective*
weights: slow start may scale a backend's configured weight down while it ramps up.
"""

from __future__ import annotations

import random
from random import random as uniform  # [0, 1): read per tie, without a module attribute lookup
from typing import Callable, Sequence

from ..pool import Backend

WeightFn = Callable[[Backend, float], float]


def static_weight(backend: Backend, now: float) -> float:
    return backend.weight


class _Weighted:
    """What every strategy is built with: how to read a backend's effective weight."""

    __slots__ = ("weight_of",)

    def __init__(self, weight_of: WeightFn = static_weight) -> None:
        self.weight_of = weight_of


class LeastConn(_Weighted):
    """Fewest (active requests + open WebSockets) per unit of weight; ties broken at random,
    so that several balancer instances do not all pile onto the same first backend."""

    __slots__ = ()

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

    __slots__ = ("_current",)

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
    """Weighted random choice."""

    __slots__ = ()

    def pick(self, candidates: Sequence[Backend], now: float) -> Backend:
        if len(candidates) == 1:
            return candidates[0]
        weights = [self.weight_of(b, now) for b in candidates]
        return random.choices(candidates, weights)[0]
