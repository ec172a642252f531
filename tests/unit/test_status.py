"""The status page's per-backend "last minute": counter samples and the p99 from a histogram."""

from __future__ import annotations

import pytest

from balancer.metrics import BUCKETS, Stats
from balancer.status import MIN_SPACING, WINDOW, RecentTraffic, quantile


def hist(**per_bound: int) -> list[float]:
    """A Stats-layout histogram with `count` observations in the bucket of each given bound."""
    out = [0.0] * (len(BUCKETS) + 2)
    for bound, count in per_bound.items():
        index = len(BUCKETS) if bound == "inf" else BUCKETS.index(float(bound.replace("_", ".")))
        out[index] += count
    return out


def test_quantile_interpolates_within_the_bucket_like_prometheus():
    # 100 requests: 90 up to 10 ms, 10 between 50 and 100 ms. The 99th is the 9th of those 10.
    h = hist(**{"0_01": 90, "0_1": 10})
    assert quantile(0.99, h) == pytest.approx(0.05 + 0.05 * 9 / 10)
    assert quantile(0.5, h) == pytest.approx(0.005 + 0.005 * 50 / 90)
    assert quantile(0.99, hist(inf=5)) == BUCKETS[-1]
    assert quantile(0.99, hist()) is None


def test_rates_errors_and_p99_cover_only_the_last_minute():
    stats = Stats()
    traffic = RecentTraffic()
    traffic.record(stats, now=0.0)
    for _ in range(600):  # the first minute: 10 req/s, all fast and fine
        stats.request("r", "games", "g1", b"GET", 200, 0.002)
    traffic.record(stats, now=60.0)
    for _ in range(120):  # the second minute: 2 req/s, a quarter 502 and slow
        stats.request("r", "games", "g1", b"GET", 200, 0.002)
    for _ in range(40):
        stats.request("r", "games", "g1", b"GET", 502, 2.0)
    traffic.record(stats, now=120.0)

    assert traffic.window() == pytest.approx(WINDOW)
    figures = traffic.backend("games", "g1")
    assert figures["requests_per_second"] == pytest.approx(160 / 60)
    assert figures["error_share"] == pytest.approx(40 / 160)
    assert 1.0 < figures["p99_seconds"] <= 2.5  # the slow quarter's bucket, not the fast minute
    assert traffic.backend("games", "unknown") == {"requests_per_second": 0.0, "error_share": None,
                                                   "p99_seconds": None}


def test_frequent_samples_replace_each_other():
    stats = Stats()
    traffic = RecentTraffic()
    traffic.record(stats, now=0.0)
    traffic.record(stats, now=5.0)
    stats.request("r", "games", "g1", b"GET", 200, 0.002)
    traffic.record(stats, now=5.0 + MIN_SPACING / 2)  # replaces the sample at 5.0
    assert traffic.window() == pytest.approx(5.0 + MIN_SPACING / 2)
    assert traffic.backend("games", "g1")["requests_per_second"] == pytest.approx(1 / traffic.window())


def test_before_two_samples_nothing_is_claimed():
    traffic = RecentTraffic()
    assert traffic.backend("games", "g1") == {"requests_per_second": None, "error_share": None,
                                              "p99_seconds": None}
