"""balance: ewma (balancer.balance.PeakEwma): peak-EWMA latency x load, power of two choices.
Pure: backends are plain objects, time is passed in."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from balancer import outlier
from balancer.balance import PeakEwma
from balancer.config import Address, BackendConfig
from balancer.pool import Backend


def make(*weights: int) -> list[Backend]:
    return [Backend("games", BackendConfig(id=f"g{i}", address=Address("10.0.0.1", 8000 + i), weight=w))
            for i, w in enumerate(weights)]


@pytest.fixture(autouse=True)
def _seeded() -> None:
    random.seed(20261203)


def test_the_faster_of_two_idle_backends_wins() -> None:
    fast, slow = make(1, 1)
    ewma = PeakEwma(decay=10.0)
    ewma.observe(fast, 0.005, 100.0)
    ewma.observe(slow, 0.025, 100.0)
    picks = Counter(ewma.pick([fast, slow], 100.0).id for _ in range(200))
    assert picks == {"g0": 200}


def test_requests_in_flight_multiply_the_latency() -> None:
    fast, slow = make(1, 1)
    ewma = PeakEwma()
    ewma.observe(fast, 0.005, 1.0)
    ewma.observe(slow, 0.010, 1.0)
    fast.active_requests = 2  # 5 ms x 3 = 15 > 10 ms x 1
    assert ewma.pick([fast, slow], 1.0) is slow
    fast.active_requests = 0
    fast.websockets = 2  # WebSockets count as load too, as for least_conn
    assert ewma.pick([fast, slow], 1.0) is slow
    fast.websockets = 0
    assert ewma.pick([fast, slow], 1.0) is fast


def test_cost_is_divided_by_the_weight() -> None:
    heavy, light = make(4, 1)
    ewma = PeakEwma()
    ewma.observe(heavy, 0.010, 1.0)
    ewma.observe(light, 0.010, 1.0)
    heavy.active_requests = 2  # 10 ms x 3 / 4 = 7.5 < 10 ms x 1 / 1
    assert ewma.pick([heavy, light], 1.0) is heavy
    heavy.active_requests = 4  # 10 ms x 5 / 4 = 12.5
    assert ewma.pick([heavy, light], 1.0) is light


def test_slow_start_scales_the_weight_down_while_a_backend_ramps_up() -> None:
    old, new = make(1, 1)
    ewma = PeakEwma(lambda b, now: outlier.effective_weight(b, now, 60.0))
    ewma.observe(old, 0.010, 100.0)
    ewma.observe(new, 0.005, 100.0)
    new.ramp_start = 100.0  # joined just now: 10% of its weight, so 5 ms counts as 50 ms
    assert ewma.pick([old, new], 100.0) is old
    assert ewma.pick([old, new], 160.0) is new  # ramp over; decay has aged both alike


def test_a_slower_answer_counts_at_once_and_faster_ones_bring_it_down_over_time() -> None:
    (backend,) = make(1)
    ewma = PeakEwma(decay=10.0)
    ewma.observe(backend, 0.005, 1.0)
    ewma.observe(backend, 0.050, 1.1)
    assert backend.latency == pytest.approx(0.050)  # the peak, not an average
    ewma.observe(backend, 0.005, 1.2)  # 0.1 s later: weighs ~1%
    assert 0.049 < backend.latency < 0.050
    ewma.observe(backend, 0.005, 21.2)  # 20 s later (two decay times): weighs ~86%
    assert 0.009 < backend.latency < 0.012  # 5 ms + ~45 ms x e^-2


def test_a_backend_left_alone_decays_until_it_is_tried_again() -> None:
    fast, slow = make(1, 1)
    ewma = PeakEwma(decay=10.0)
    ewma.observe(slow, 0.100, 1.0)
    ewma.observe(fast, 0.005, 1.0)
    assert ewma.pick([fast, slow], 1.0) is fast
    # The fast one keeps answering in 5 ms; nothing is heard of the slow one for a minute.
    for second in range(2, 62):
        ewma.observe(fast, 0.005, float(second))
    assert ewma.pick([fast, slow], 61.0) is slow  # 100 ms x e^-6 = 0.25 ms: worth a new look


def test_a_new_backend_starts_at_the_median_not_at_zero() -> None:
    a, b, c, new = make(1, 1, 1, 1)
    ewma = PeakEwma(decay=10.0)
    for backend, latency in ((a, 0.001), (b, 0.005), (c, 0.009)):
        ewma.observe(backend, latency, 50.0)
    ewma.seed([a, b, c, new], 50.0)
    assert new.latency == pytest.approx(0.005)
    assert new.latency_at == 50.0
    # At the median it takes a fair share, not every request: c (slowest) and new vs a...
    picks = Counter(ewma.pick([a, b, c, new], 50.0).id for _ in range(3000))
    assert picks["g0"] > picks["g3"] > picks["g2"]


def test_picking_seeds_the_new_backend_once_it_is_drawn() -> None:
    a, b, new = make(1, 1, 1)
    ewma = PeakEwma()
    ewma.observe(a, 0.002, 5.0)
    ewma.observe(b, 0.004, 5.0)
    for _ in range(50):
        ewma.pick([a, b, new], 5.0)
    assert new.latency == pytest.approx(0.003)  # the mean of the middle two


def test_with_nothing_measured_yet_load_and_weight_decide() -> None:
    a, b = make(1, 1)
    ewma = PeakEwma()
    a.active_requests = 1
    assert ewma.pick([a, b], 0.0) is b
    assert a.latency_at == 0.0 and b.latency_at == 0.0  # no median to start from: left unmeasured


def test_two_random_choices_spread_over_equal_backends() -> None:
    backends = make(*([1] * 8))
    ewma = PeakEwma()
    for b in backends:
        ewma.observe(b, 0.005, 1.0)
    picks = Counter(ewma.pick(backends, 1.0).id for _ in range(8000))
    # Each is drawn into 1/4 of the pairs and wins half of those: 1000 each, give or take.
    assert len(picks) == 8
    assert all(800 < n < 1200 for n in picks.values()), picks


def test_a_measured_zero_does_not_make_load_irrelevant() -> None:
    a, b = make(1, 1)
    ewma = PeakEwma()
    ewma.observe(a, 0.0, 1.0)
    ewma.observe(b, 0.0, 1.0)
    a.active_requests = 3
    assert ewma.pick([a, b], 1.0) is b


def test_single_candidate_is_always_chosen() -> None:
    (only,) = make(1)
    assert PeakEwma().pick([only], 0.0) is only
