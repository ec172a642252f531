"""consistent_hash: weighted rendezvous (highest random weight) hashing, optionally with bounded
loads (docs/configuration.md `hash_on`, `hash_balance_factor`; docs/architecture.md, "Choosing
a backend" step 4 and "More than one machine").

Every backend gets a pseudo-random score for the key and the highest score wins. Removing a
backend therefore moves only the keys it won (~1/N of them), and adding one moves only the
keys it now wins. Weighted scores follow Schindelhauer and Schomaker's logarithmic method:
score = -weight / ln(u), u uniform in (0, 1), which gives each backend a share of keys
proportional to its weight.

Instances must agree without talking to each other, so every hash here is stable across
processes and machines: blake2b for the key and the backend ids (never the built-in hash(),
which is salted per process), then splitmix64's finalizer to combine them. Per request that is
one blake2b of the key plus a few integer operations per backend.

Bounded loads (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads"):
with a factor c > 1 no backend takes more than ceil(c * (total load + 1) * its share of the
weight); a full backend passes the key on to the next one in score order. Load is local to
each instance, so with bounded loads instances may disagree (documented with
`hash_balance_factor` in docs/configuration.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from hashlib import blake2b
from typing import Protocol, TypeVar

_MASK64 = (1 << 64) - 1
_SPLITMIX_1 = 0xBF58476D1CE4E5B9
_SPLITMIX_2 = 0x94D049BB133111EB
_TWO_POW_MINUS_52 = 2.0 ** -52
_ID_PERSON = b"balancer.hrw.id"  # keeps a backend id and an equal key from hashing alike
_ID_CACHE_MAX = 65536  # ids churn with Consul; bound instead of leaking
_id_hashes: dict[str, int] = {}


class Hashable(Protocol):
    id: str
    weight: int

    @property
    def load(self) -> int: ...


B = TypeVar("B", bound=Hashable)


def key_hash(key: bytes) -> int:
    """Stable 64-bit hash of a request's hash key."""
    return int.from_bytes(blake2b(key, digest_size=8).digest(), "little")


def id_hash(backend_id: str) -> int:
    """Stable 64-bit hash of a backend id, cached: it is needed for every backend per request."""
    value = _id_hashes.get(backend_id)
    if value is None:
        if len(_id_hashes) >= _ID_CACHE_MAX:
            _id_hashes.clear()
        value = int.from_bytes(blake2b(backend_id.encode("utf-8"), digest_size=8, person=_ID_PERSON).digest(), "little")
        _id_hashes[backend_id] = value
    return value


def _mix(key: int, backend_id: str) -> int:
    """64-bit pseudo-random value of (key, backend). splitmix64's finalizer is a bijection, so
    distinct backends never tie for the same key."""
    x = key ^ id_hash(backend_id)
    x = ((x ^ (x >> 30)) * _SPLITMIX_1) & _MASK64
    x = ((x ^ (x >> 27)) * _SPLITMIX_2) & _MASK64
    return x ^ (x >> 31)


def _weighted(mixed: int, weight: int) -> float:
    # Top 52 bits plus one half: u lies strictly inside (0, 1) as a float, so ln(u) < 0.
    return -weight / math.log(((mixed >> 12) + 0.5) * _TWO_POW_MINUS_52)


def score(key: bytes, backend_id: str, weight: int) -> float:
    """A backend's weighted rendezvous score for `key` (for tests and diagnostics)."""
    return _weighted(_mix(key_hash(key), backend_id), weight)


def pick(candidates: Sequence[B], key: bytes, balance_factor: float = 0.0) -> B:
    """The backend for `key` among `candidates` (non-empty). `balance_factor` > 1 turns on
    bounded loads; anything else is plain weighted rendezvous hashing."""
    count = len(candidates)
    if count == 1:
        return candidates[0]
    if count == 0:
        raise ValueError("consistent_hash.pick needs at least one candidate")
    k = key_hash(key)
    if balance_factor > 1.0:
        return _pick_bounded(candidates, k, balance_factor)
    # The loops below inline _mix: a call per backend and request costs (docs/decisions.md).
    cached = _id_hashes.get
    best = candidates[0]
    weight = best.weight
    for b in candidates:
        if b.weight != weight:
            break
    else:
        # Equal weights: -w/ln(u) grows with u, so the largest mixed value wins; no logarithm.
        best_value = -1
        for b in candidates:
            h = cached(b.id)
            x = k ^ (id_hash(b.id) if h is None else h)
            x = ((x ^ (x >> 30)) * _SPLITMIX_1) & _MASK64
            x = ((x ^ (x >> 27)) * _SPLITMIX_2) & _MASK64
            x ^= x >> 31
            if x > best_value:
                best_value = x
                best = b
        return best
    log = math.log
    best_score = -1.0
    for b in candidates:
        h = cached(b.id)
        x = k ^ (id_hash(b.id) if h is None else h)
        x = ((x ^ (x >> 30)) * _SPLITMIX_1) & _MASK64
        x = ((x ^ (x >> 27)) * _SPLITMIX_2) & _MASK64
        x ^= x >> 31
        s = -b.weight / log(((x >> 12) + 0.5) * _TWO_POW_MINUS_52)
        if s > best_score:
            best_score = s
            best = b
    return best


def _pick_bounded(candidates: Sequence[B], k: int, factor: float) -> B:
    total_load = 0
    total_weight = 0
    scored: list[tuple[float, int, B]] = []
    for index, b in enumerate(candidates):
        total_load += b.load
        total_weight += b.weight
        # The index breaks (practically impossible) score ties without comparing backends.
        scored.append((_weighted(_mix(k, b.id), b.weight), index, b))
    if total_weight <= 0:
        return max(scored)[2]
    # Capacity of a backend = ceil(per_weight * its weight); the + 1 counts the request being
    # placed, so some backend always has room (the capacities sum to more than total_load).
    per_weight = factor * (total_load + 1) / total_weight
    top = max(scored)
    b = top[2]
    if b.load < math.ceil(per_weight * b.weight):
        return b  # the usual case: the preferred backend has room, no sort needed
    scored.sort(reverse=True)
    for _, _, b in scored:
        if b.load < math.ceil(per_weight * b.weight):
            return b
    return top[2]
