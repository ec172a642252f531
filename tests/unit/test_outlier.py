"""Passive outlier ejection and slow start: pure state changes, no sockets."""

from __future__ import annotations

import itertools
import logging

import pytest

from balancer.config import Address, BackendConfig, OutlierConfig, PoolConfig
from balancer.outlier import effective_weight, record_failure, record_success
from balancer.pool import Pool

NOW = 1000.0
# The suppression log is rate-limited per pool name, module-wide: each test gets its own name.
_pool_names = (f"p{i}" for i in itertools.count())


def make_pool(
    n: int = 4,
    *,
    consecutive_failures: int = 3,
    base_ejection: float = 10.0,
    max_ejection: float = 35.0,
    max_ejected_percent: int = 50,
    slow_start: float = 0.0,
    weight: int = 1,
) -> Pool:
    backends = tuple(
        BackendConfig(id=f"b{i}", address=Address("127.0.0.1", 9000 + i), weight=weight)
        for i in range(n)
    )
    outlier = OutlierConfig(
        consecutive_failures=consecutive_failures,
        base_ejection=base_ejection,
        max_ejection=max_ejection,
        max_ejected_percent=max_ejected_percent,
    )
    config = PoolConfig(name=next(_pool_names), backends=backends, outlier=outlier, slow_start=slow_start)
    return Pool(config)


def fail(pool: Pool, backend_id: str, times: int, now: float = NOW) -> list[bool]:
    backend = pool.backends[backend_id]
    return [record_failure(pool, backend, now) for _ in range(times)]


def test_ejects_at_the_threshold_and_not_before() -> None:
    pool = make_pool()
    b = pool.backends["b0"]

    assert fail(pool, "b0", 3) == [False, False, True]

    assert b.ejected_until == NOW + 10.0
    assert b.ejections == 1
    assert b.ejections_total == 1
    assert b.consecutive_failures == 0
    assert b not in pool.eligible(NOW + 1)
    assert b in pool.eligible(NOW + 10.0)


def test_success_resets_the_streak() -> None:
    pool = make_pool()
    b = pool.backends["b0"]

    fail(pool, "b0", 2)
    record_success(b)
    assert fail(pool, "b0", 2) == [False, False]

    assert b.ejected_until == 0.0
    assert b.ejections_total == 0


def test_ejection_duration_scales_with_ejections_and_is_capped() -> None:
    pool = make_pool(base_ejection=10.0, max_ejection=35.0)
    b = pool.backends["b0"]
    durations = []
    now = NOW
    for _ in range(5):
        assert fail(pool, "b0", 3, now)[-1] is True
        durations.append(b.ejected_until - now)
        now = b.ejected_until + 1.0  # fails again soon after coming back

    assert durations == [10.0, 20.0, 30.0, 35.0, 35.0]
    assert b.ejections_total == 5


def test_failures_while_ejected_do_not_extend_the_ejection() -> None:
    pool = make_pool()
    b = pool.backends["b0"]
    fail(pool, "b0", 3)
    until = b.ejected_until

    # Requests that were already in flight fail afterwards.
    assert fail(pool, "b0", 10, NOW + 1) == [False] * 10

    assert b.ejected_until == until
    assert b.ejections == 1
    assert b.ejections_total == 1


def test_ejection_multiplier_decays_after_a_quiet_period() -> None:
    pool = make_pool(base_ejection=10.0, max_ejection=35.0)
    b = pool.backends["b0"]
    fail(pool, "b0", 3)
    fail(pool, "b0", 3, b.ejected_until + 1)
    assert b.ejections == 2

    # Quiet for longer than max_ejection after the last ejection ended: starts over.
    later = b.ejected_until + 35.0
    assert fail(pool, "b0", 3, later)[-1] is True

    assert b.ejections == 1
    assert b.ejected_until == later + 10.0
    assert b.ejections_total == 3


def test_max_ejected_percent_keeps_the_rest_in(caplog: pytest.LogCaptureFixture) -> None:
    pool = make_pool(n=4, max_ejected_percent=50)
    caplog.set_level(logging.WARNING, logger="balancer.health")

    assert fail(pool, "b0", 3)[-1] is True
    assert fail(pool, "b1", 3)[-1] is True
    # A third ejection would put 75% of the pool out.
    assert fail(pool, "b2", 3)[-1] is False
    assert fail(pool, "b2", 3)[-1] is False

    b2 = pool.backends["b2"]
    assert b2.ejected_until == 0.0
    assert b2.ejections_total == 0
    assert b2 in pool.eligible(NOW)
    assert pool.panics_total == 2
    # Logged once although suppressed twice (rate-limited per pool).
    suppressed = [r for r in caplog.records if "not ejecting" in r.getMessage()]
    assert len(suppressed) == 1


def test_max_ejected_percent_counts_only_usable_backends() -> None:
    pool = make_pool(n=4, max_ejected_percent=50)
    pool.backends["b3"].healthy = False  # usable: b0, b1, b2

    assert fail(pool, "b0", 3)[-1] is True
    # 2 of 3 usable would be 67% > 50%.
    assert fail(pool, "b1", 3)[-1] is False


def test_an_ended_ejection_no_longer_counts_toward_the_limit() -> None:
    pool = make_pool(n=2, max_ejected_percent=50)
    b0 = pool.backends["b0"]
    assert fail(pool, "b0", 3)[-1] is True
    assert fail(pool, "b1", 3)[-1] is False

    assert fail(pool, "b1", 3, b0.ejected_until)[-1] is True


def test_single_backend_pool_is_never_ejected() -> None:
    # Ejecting the only backend would be 100% of the pool; Pool.eligible would put it straight
    # back (panic mode), so it is not ejected in the first place.
    pool = make_pool(n=1, max_ejected_percent=50)

    assert fail(pool, "b0", 3)[-1] is False
    assert pool.backends["b0"] in pool.eligible(NOW)


def test_ejection_schedules_slow_start_from_its_end() -> None:
    pool = make_pool(slow_start=30.0)
    b = pool.backends["b0"]
    fail(pool, "b0", 3)

    assert b.ramp_start == b.ejected_until


def test_no_ramp_scheduled_without_slow_start() -> None:
    pool = make_pool(slow_start=0.0)
    fail(pool, "b0", 3)

    assert pool.backends["b0"].ramp_start == 0.0


def test_effective_weight_ramps_linearly_from_ten_percent() -> None:
    pool = make_pool(weight=10, slow_start=30.0)
    b = pool.backends["b0"]
    b.ramp_start = NOW

    assert effective_weight(b, NOW - 5, 30.0) == pytest.approx(1.0)  # ramp not begun yet
    assert effective_weight(b, NOW, 30.0) == pytest.approx(1.0)
    assert effective_weight(b, NOW + 15, 30.0) == pytest.approx(5.5)
    assert effective_weight(b, NOW + 30, 30.0) == 10
    assert effective_weight(b, NOW + 3600, 30.0) == 10


def test_effective_weight_is_full_without_a_ramp() -> None:
    pool = make_pool(weight=3)
    b = pool.backends["b0"]

    assert effective_weight(b, NOW, 30.0) == 3  # never ramped
    b.ramp_start = NOW
    assert effective_weight(b, NOW, 0.0) == 3  # slow start off
