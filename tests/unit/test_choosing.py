"""Choosing a backend as a pure function: `PoolRuntime.choose(facts) -> Choice` and
`choose_again`, over facts built by hand (no sockets, no exchange). The order they follow:
docs/architecture.md, "Choosing a backend"."""

from __future__ import annotations

from time import monotonic

from balancer.config_file import parse_config
from balancer.http.parser import RequestHead
from balancer.metrics import Stats
from balancer.pool import Pool
from balancer.runtime import NONE_ELIGIBLE, NONE_IN_REGION, STICKY_GONE, Facts, Runtime


def runtime_of(pool: dict, geo: dict | None = None, routes: list | None = None,
               extra_pools: dict | None = None) -> Runtime:
    pools = {"games": {"backends": [{"id": "b1", "address": "127.0.0.1:9001", "region": "eu-west"},
                                    {"id": "b2", "address": "127.0.0.1:9002", "region": "eu-west"}],
                       **pool}, **(extra_pools or {})}
    raw = {"listeners": [{"name": "public", "address": "127.0.0.1:0"}],
           "routes": routes or [{"name": "all", "pool": "games"}], "pools": pools}
    if geo is not None:
        raw["geo"] = geo
    config = parse_config(raw, "test.yaml")
    return Runtime(config, {name: Pool(c) for name, c in config.pools.items()}, Stats(),
                   sticky_secret=lambda env: b"secret")


def facts(cookie: bytes | None = None, https: bool = False, country: str | None = None,
          region: str | None = None) -> Facts:
    head = RequestHead()
    head.method, head.target, head.path = b"GET", b"/", b"/"
    head.cookie = cookie
    return Facts(head, "192.0.2.1", https, country, region, monotonic())


def cookie_of(set_cookie: bytes) -> bytes:
    """The Cookie header a browser sends back for a Set-Cookie value."""
    return set_cookie.split(b";")[0]


STICKY = {"sticky": {"cookie": "srv"}}


def test_a_new_player_is_balanced_and_given_a_cookie_that_brings_them_back() -> None:
    pool = runtime_of(STICKY).pools["games"]
    first = pool.choose(facts())
    assert first.backend is not None and first.sticky == "new" and first.pool is pool
    assert first.set_cookie is not None and first.set_cookie.startswith(b"srv=")
    assert b"Secure" not in first.set_cookie
    again = pool.choose(facts(cookie_of(first.set_cookie)))
    assert (again.backend, again.sticky, again.set_cookie) == (first.backend, "hit", None)


def test_a_cookie_issued_over_https_is_secure() -> None:
    choice = runtime_of(STICKY).pools["games"].choose(facts(https=True))
    assert b"Secure" in choice.set_cookie


def test_a_player_whose_backend_fell_is_rebalanced_with_a_new_cookie() -> None:
    pool = runtime_of(STICKY).pools["games"]
    first = pool.choose(facts())
    first.backend.healthy = False
    moved = pool.choose(facts(cookie_of(first.set_cookie)))
    assert moved.backend is not None and moved.backend is not first.backend
    assert moved.sticky == "rebalanced" and moved.set_cookie is not None


def test_on_failure_fail_refuses_instead_of_moving_the_game() -> None:
    pool = runtime_of({"sticky": {"cookie": "srv", "on_failure": "fail"}}).pools["games"]
    first = pool.choose(facts())
    first.backend.healthy = False
    refused = pool.choose(facts(cookie_of(first.set_cookie)))
    assert (refused.backend, refused.reason, refused.sticky) == (None, STICKY_GONE, "failed")
    assert refused.retry_after == 1 and not refused.no_backend  # a split must not move it either


def test_a_forged_cookie_is_as_if_absent() -> None:
    choice = runtime_of(STICKY).pools["games"].choose(facts(b"srv=forged.value"))
    assert choice.backend is not None and choice.sticky == "new"


def test_nothing_eligible_is_a_refusal_with_its_reason() -> None:
    pool = runtime_of({}).pools["games"]
    for backend in pool.pool.backends.values():
        backend.healthy = False
    choice = pool.choose(facts())
    assert (choice.backend, choice.reason, choice.retry_after, choice.no_backend) == (
        None, NONE_ELIGIBLE, 1, True)


GEO = {"regions": {"eu-west": ["DE"], "eu-south": ["MT", "IT"]},
       "fallback": {"eu-south": ["eu-west"]}, "pinned_countries": ["MT"]}


def test_a_pinned_country_never_leaves_its_region() -> None:
    pool = runtime_of({"geo": True}, GEO).pools["games"]
    pinned = pool.choose(facts(country="MT", region="eu-south"))
    assert (pinned.backend, pinned.reason) == (None, NONE_IN_REGION)
    fallback = pool.choose(facts(country="IT", region="eu-south"))
    assert fallback.backend is not None and fallback.backend.region == "eu-west"


def test_choose_again_never_returns_a_tried_backend() -> None:
    pool = runtime_of({}).pools["games"]
    first = pool.choose(facts())
    f = facts()
    second = pool.choose_again(f, [first.backend], False, "none")
    assert second is not None and second.backend is not first.backend
    assert pool.choose_again(f, [first.backend, second.backend], False, "none") is None


def test_choose_again_moves_a_sticky_player_only_under_rebalance() -> None:
    rebalance = runtime_of(STICKY).pools["games"]
    first = rebalance.choose(facts())
    hit = rebalance.choose(facts(cookie_of(first.set_cookie)))
    moved = rebalance.choose_again(facts(), [hit.backend], False, "hit")
    assert moved is not None and moved.backend is not hit.backend
    assert moved.sticky == "rebalanced" and moved.set_cookie is not None
    fail = runtime_of({"sticky": {"cookie": "srv", "on_failure": "fail"}}).pools["games"]
    first = fail.choose(facts())
    # The player's own cookie chose the backend (no cookie issued): the game must not move.
    assert fail.choose_again(facts(), [first.backend], False, "hit") is None
    # A backend balanced to (a cookie was issued) may be replaced before the player has it.
    assert fail.choose_again(facts(), [first.backend], True, "new") is not None


def test_a_split_names_the_side_that_serves_and_the_cookie_to_issue() -> None:
    runtime = runtime_of({}, routes=[{"name": "all", "split": [{"pool": "games", "weight": 1},
                                                               {"pool": "canary", "weight": 1}]}],
                         extra_pools={"canary": {"backends": [{"id": "c1", "address": "127.0.0.1:9003"}]}})
    runtime.pools["canary"].pool.backends["c1"].healthy = False
    split = runtime.routes.routes[0].split
    for _ in range(20):  # whichever side a new player draws, the one that can serve serves
        choice = split.choose(facts())
        assert choice.backend is not None and choice.pool is runtime.pools["games"]
        assert choice.split_cookie is not None and choice.split_cookie.startswith(b"LB_SPLIT=")


def test_one_connections_facts_answer_for_each_request_in_turn() -> None:
    """A player's side keeps one Facts and refills it per request: a returning player's cookie
    on one request does not stick to the next, which carries none."""
    pool = runtime_of(STICKY).pools["games"]
    kept = facts(https=True)
    first = pool.choose(kept)
    returning = facts(cookie_of(first.set_cookie)).head
    assert kept.for_request(returning, "DE", "eu-west", monotonic()) is kept
    assert (kept.head, kept.country, kept.region, kept.https) == (returning, "DE", "eu-west", True)
    assert pool.choose(kept).sticky == "hit"
    assert pool.choose(kept.for_request(facts().head, None, None, monotonic())).sticky == "new"
