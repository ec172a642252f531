"""Balancing strategies (balancer.balance): pure selection among candidates, no I/O
(docs/architecture.md, "Choosing a backend" step 4)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from balancer.balance import LeastConn, Random, RoundRobin
from balancer.config import Address, BackendConfig
from balancer.pool import Backend


def make(*weights: int) -> list[Backend]:
    return [Backend("games", BackendConfig(id=chr(ord("a") + i), address=Address("10.0.0.1", 8000 + i),
                                           weight=w))
            for i, w in enumerate(weights)]


@pytest.fixture(autouse=True)
def _seeded() -> None:
    # The strategies use the module-level `random`; a fixed seed makes every run the same run.
    random.seed(20240501)


# -- least_conn -------------------------------------------------------------------------------


def test_least_conn_picks_the_fewest_in_flight() -> None:
    a, b, c = make(1, 1, 1)
    a.active_requests, b.active_requests, c.active_requests = 3, 1, 2
    assert LeastConn().pick([a, b, c], 0.0) is b


def test_least_conn_counts_websockets_as_load() -> None:
    a, b = make(1, 1)
    a.active_requests = 1
    b.websockets = 5  # a live table holding five players for hours
    assert LeastConn().pick([a, b], 0.0) is a


def test_least_conn_divides_by_weight() -> None:
    a, b = make(3, 1)
    a.active_requests = 4  # (4+1)/3 = 1.67
    b.active_requests = 1  # (1+1)/1 = 2
    assert LeastConn().pick([a, b], 0.0) is a
    a.active_requests = 6  # (6+1)/3 = 2.33
    assert LeastConn().pick([a, b], 0.0) is b


def test_least_conn_weighted_shares_follow_weights_when_requests_stay_in_flight() -> None:
    """Picking and keeping each request in flight fills backends in proportion to weight."""
    backends = make(3, 1)
    strategy = LeastConn()
    for _ in range(400):
        strategy.pick(backends, 0.0).active_requests += 1
    assert [b.active_requests for b in backends] == [300, 100]


def test_least_conn_breaks_ties_at_random() -> None:
    """Several balancer instances must not all pile onto the first backend of a tie."""
    backends = make(1, 1, 1)
    backends[2].active_requests = 1
    picks = Counter(LeastConn().pick(backends, 0.0).id for _ in range(3000))
    assert set(picks) == {"a", "b"}  # never the busier one
    assert 1300 < picks["a"] < 1700  # Binomial(3000, 1/2): sd ~27, so this is > 5 sd wide


def test_least_conn_uses_the_effective_weight() -> None:
    """Slow start hands in a smaller weight for a ramping backend."""
    a, b = make(1, 1)
    ramping = LeastConn(lambda backend, now: 0.1 if backend is a else backend.weight)
    b.active_requests = 3  # (3+1)/1 = 4 < (0+1)/0.1 = 10
    assert ramping.pick([a, b], 0.0) is b


# -- round_robin (smooth weighted, as nginx) --------------------------------------------------


def test_round_robin_weights_5_1_1_give_the_nginx_sequence() -> None:
    backends = make(5, 1, 1)
    strategy = RoundRobin()
    sequence = "".join(strategy.pick(backends, 0.0).id for _ in range(14))
    # nginx's smooth weighted round robin: heavy backends interleave rather than burst.
    assert sequence == "aabacaa" * 2


def test_round_robin_equal_weights_rotate() -> None:
    backends = make(1, 1, 1)
    strategy = RoundRobin()
    assert "".join(strategy.pick(backends, 0.0).id for _ in range(6)) == "abcabc"


def test_round_robin_shares_are_exact_over_a_cycle() -> None:
    backends = make(3, 2, 1)
    strategy = RoundRobin()
    picks = Counter(strategy.pick(backends, 0.0).id for _ in range(600))
    assert picks == {"a": 300, "b": 200, "c": 100}


def test_round_robin_carries_on_when_a_candidate_drops_out() -> None:
    a, b, c = make(1, 1, 1)
    strategy = RoundRobin()
    picks = [strategy.pick([a, b, c], 0.0).id for _ in range(3)]
    assert sorted(picks) == ["a", "b", "c"]
    # b becomes ineligible: the others keep alternating, nobody gets everything.
    later = Counter(strategy.pick([a, c], 0.0).id for _ in range(10))
    assert later == {"a": 5, "c": 5}


# -- random (weighted) --------------------------------------------------------------------------


def test_random_follows_the_weights() -> None:
    backends = make(3, 1)
    picks = Counter(Random().pick(backends, 0.0).id for _ in range(8000))
    # Binomial(8000, 3/4): mean 6000, sd ~39; +-250 is > 6 sd.
    assert abs(picks["a"] - 6000) < 250
    assert picks["a"] + picks["b"] == 8000


def test_random_never_picks_a_zero_weight_backend() -> None:
    a, b = make(1, 1)
    ramping = Random(lambda backend, now: 0.0 if backend is b else 1.0)
    assert {ramping.pick([a, b], 0.0).id for _ in range(200)} == {"a"}


def test_single_candidate_is_always_chosen() -> None:
    (only,) = make(1)
    for strategy in (LeastConn(), RoundRobin(), Random()):
        assert strategy.pick([only], 0.0) is only
