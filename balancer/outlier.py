"""Passive outlier ejection and slow start: pure bookkeeping on `Backend` / `Pool` state.

The data plane calls `record_success` / `record_failure` on every upstream result. A backend is
ejected after `outlier.consecutive_failures` errors in a row, for `base_ejection x ejections so
far`, capped at `max_ejection` (Envoy's scheme), and never more than `max_ejected_percent` of a
pool's usable backends. `effective_weight` scales a backend's weight during slow start, after
it joins or recovers.

No I/O and no event loop: the active checks (balancer/health.py, aiohttp) run in the control
plane and meet this module only through the `Backend` fields they both change.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pool import Backend, Pool

# The same logger as the active checks: operators follow one backend's health in one place.
log = logging.getLogger("balancer.health")

# A backend in slow start begins at this share of its weight: zero would starve it of the very
# traffic that warms it up, and a ramp from zero makes the first seconds all-or-nothing.
SLOW_START_MIN_SHARE = 0.1
# The "outlier ejection suppressed" warning is logged at most this often per pool: under a
# failure storm it would otherwise be logged for every failed request.
PANIC_LOG_INTERVAL = 5.0

_last_panic_log: dict[str, float] = {}


# -- passive outlier detection (hot path: no logging, no allocation on success) ------------


def record_success(backend: Backend) -> None:
    """An upstream exchange worked: the failure streak is broken."""
    backend.consecutive_failures = 0


def record_failure(pool: Pool, backend: Backend, now: float) -> bool:
    """Count an upstream failure (connect error, reset, timeout, 5xx); eject at the threshold.

    `now` is `time.monotonic()`. Returns True when this call ejected the backend.
    """
    if backend.ejected_until > now:
        # Requests that were in flight when it was ejected fail too; they say nothing new and
        # must not stretch the ejection or count as a second one (Envoy ignores them as well).
        return False
    failures = backend.consecutive_failures + 1
    outlier = pool.config.outlier
    if failures < outlier.consecutive_failures:
        backend.consecutive_failures = failures
        return False
    backend.consecutive_failures = 0
    if not _may_eject(pool, backend, now):
        pool.panics_total += 1
        _log_suppressed(pool, backend, now)
        return False
    _eject(pool, backend, now)
    return True


def _may_eject(pool: Pool, backend: Backend, now: float) -> bool:
    """Would ejecting `backend` keep the ejected share of usable backends within the limit?

    Same arithmetic as `Pool.eligible`'s panic mode, so an ejection allowed here is never
    undone at selection time.
    """
    if backend.draining or not backend.healthy:
        # Not counted among the usable backends, so ejecting it takes nothing from the pool.
        return True
    usable = 0
    ejected = 1  # this one
    for b in pool.members:
        if b.draining or not b.healthy:
            continue
        usable += 1
        if b.ejected_until > now and b is not backend:
            ejected += 1
    return ejected * 100 <= usable * pool.config.outlier.max_ejected_percent


def _eject(pool: Pool, backend: Backend, now: float) -> None:
    outlier = pool.config.outlier
    if backend.ejections and now - backend.ejected_until >= outlier.max_ejection:
        # Well-behaved for a long time since the last ejection: an old flap must not make the
        # next ejection long (Envoy decays the multiplier likewise).
        backend.ejections = 0
    backend.ejections += 1
    duration = min(outlier.base_ejection * backend.ejections, outlier.max_ejection)
    backend.ejected_until = now + duration
    backend.ejections_total += 1
    if pool.config.slow_start > 0:
        # Ramp from when it comes back, not from now: the ejection itself is no warm-up.
        backend.ramp_start = backend.ejected_until
    log.warning(
        "backend %s/%s (%s) ejected for %.1fs after %d consecutive failures (ejection #%d)",
        pool.name, backend.id, backend.address, duration,
        outlier.consecutive_failures, backend.ejections,
    )


def _log_suppressed(pool: Pool, backend: Backend, now: float) -> None:
    last = _last_panic_log.get(pool.name)
    if last is not None and now - last < PANIC_LOG_INTERVAL:
        return
    _last_panic_log[pool.name] = now
    log.warning(
        "pool %s: not ejecting backend %s (%s): over max_ejected_percent=%d%% of the pool "
        "would be ejected (panic mode)",
        pool.name, backend.id, backend.address,
        pool.config.outlier.max_ejected_percent,
    )


# -- slow start ----------------------------------------------------------------------------


def effective_weight(backend: Backend, now: float, slow_start: float) -> float:
    """The backend's weight, ramped linearly from 10% to 100% over `slow_start` seconds after
    `backend.ramp_start`. Before the ramp starts (ejection not over yet) it is at the minimum."""
    ramp_start = backend.ramp_start
    if not ramp_start or slow_start <= 0:
        return backend.weight
    elapsed = now - ramp_start
    if elapsed >= slow_start:
        return backend.weight
    if elapsed <= 0:
        return backend.weight * SLOW_START_MIN_SHARE
    return backend.weight * (SLOW_START_MIN_SHARE + (1 - SLOW_START_MIN_SHARE) * elapsed / slow_start)
