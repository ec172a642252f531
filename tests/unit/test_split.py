"""Canary split arithmetic (balancer.split.Split): places in [0, 1) against cumulative weights.
Built from a real config through the real Runtime; no sockets."""

from __future__ import annotations

import pytest

from balancer.config_file import parse_config
from balancer.metrics import Stats
from balancer.pool import Pool
from balancer.runtime import Runtime
from balancer.split import Split

PLACES = [i / 10000 for i in range(10000)]  # evenly spread players


def split_of(*weights: int) -> Split:
    pools = {f"v{i + 1}": {"backends": [{"id": f"b{i + 1}", "address": f"127.0.0.1:{9000 + i}"}]}
             for i in range(len(weights))}
    config = parse_config({
        "listeners": [{"name": "public", "address": "127.0.0.1:0"}],
        "routes": [{"name": "games", "split": [{"pool": name, "weight": w}
                                               for name, w in zip(pools, weights)]}],
        "pools": pools,
    }, "test.yaml")
    runtime = Runtime(config, {name: Pool(c) for name, c in config.pools.items()}, Stats(),
                      sticky_secret=lambda env: b"secret")
    split = runtime.routes.routes[0].split
    assert split is not None
    return split


def sides(split: Split) -> list[int]:
    return [split.side_of(place) for place in PLACES]


def test_sides_cover_consecutive_ranges_by_weight() -> None:
    split = split_of(95, 5)
    assert split.side_of(0.0) == 0
    assert split.side_of(0.9499) == 0
    assert split.side_of(0.95) == 1
    assert split.side_of(0.99999) == 1
    assert sides(split).count(1) == 500


def test_a_weight_change_moves_exactly_the_players_between_the_boundaries() -> None:
    split = split_of(95, 5)
    before = sides(split)
    split.set_weights([90, 10])
    after = sides(split)
    moved = [(a, b) for a, b in zip(before, after) if a != b]
    assert moved == [(0, 1)] * 500  # 5% of players, all from v1 to v2
    split.set_weights([95, 5])
    assert sides(split) == before  # and back: the same players return


def test_three_sides() -> None:
    split = split_of(50, 30, 20)
    before = sides(split)
    assert [before.count(i) for i in range(3)] == [5000, 3000, 2000]
    split.set_weights([60, 20, 20])
    after = sides(split)
    assert sum(a != b for a, b in zip(before, after)) == 1000
    assert {(a, b) for a, b in zip(before, after) if a != b} == {(1, 0)}


def test_a_side_at_weight_zero_gets_nobody_and_takes_no_fallback() -> None:
    split = split_of(100, 0, 50)
    assert set(sides(split)) == {0, 2}
    assert [pool.name for pool in split._fallback[0]] == ["v3"]
    assert [pool.name for pool in split._fallback[2]] == ["v1"]


def test_fallback_tries_the_largest_other_side_first() -> None:
    split = split_of(10, 60, 30)
    assert [pool.name for pool in split._fallback[0]] == ["v2", "v3"]
    assert [pool.name for pool in split._fallback[1]] == ["v3", "v1"]


@pytest.mark.parametrize("weights", [[1], [0, 0], [-1, 2], [1, 2, 3]])
def test_bad_weights_are_refused_and_change_nothing(weights: list[int]) -> None:
    split = split_of(80, 20)
    with pytest.raises(ValueError):
        split.set_weights(weights)
    assert split.weights == (80, 20)
