"""Backend health and safe failover through the real balancer, with real backends that die,
hang, reset, answer 5xx and recover (docs/configuration.md health_check/outlier/slow_start/retries/
max_connections_per_backend; docs/architecture.md; /readyz and the metrics of docs/monitoring.md).

Every test looks only at what an operator or a player sees: status codes, which backend
answered, how many requests each backend received, /admin/pools, /readyz and /metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Awaitable, Callable

import aiohttp

from balancer.health import JITTER
from balancer.http.exchange import RETRY_BUFFER
from tests.conftest import Running, Samples, metric_samples, pool_yaml
from tests.fakes.backends import Backend, free_port
from tests.fakes.h2client import H2Client
from tests.waiting import HANG_GUARD

# Scheduling slack for the event loop shared by balancer, backends and test client.
# Detection bounds: the configured probe schedule plus an honest margin for a busy machine
# (a detection that never happens, or waits for extra probes, still fails).
SLACK = 2.0
ALL_CONDITIONS = "[connect_failure, reset, 502, 503, 504]"


# -- what an operator looks at ------------------------------------------------------------


async def scrape(lb: Running, http: aiohttp.ClientSession) -> Samples:
    """/metrics as {(sample name, labels): value}."""
    async with http.get(lb.admin_url + "/metrics") as resp:
        assert resp.status == 200
        return metric_samples(await resp.text())


def metric(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def states(lb: Running, http: aiohttp.ClientSession, pool: str = "web") -> dict[str, dict]:
    """/admin/pools for one pool: backend id -> its document."""
    async with http.get(lb.admin_url + "/admin/pools") as resp:
        assert resp.status == 200
        doc = await resp.json()
    for entry in doc["pools"]:
        if entry["name"] == pool:
            return {b["id"]: b for b in entry["backends"]}
    raise AssertionError(f"no pool {pool} in {doc}")


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, step: float = 0.01) -> float:
    """Poll until `condition` holds; returns how long it took (fails after `timeout`)."""
    start = time.monotonic()
    while not await condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(step)
    return time.monotonic() - start


async def state_is(lb: Running, http: aiohttp.ClientSession, backend: str, state: str) -> bool:
    return (await states(lb, http))[backend]["state"] == state


async def get(http: aiohttp.ClientSession, url: str, **kwargs: object) -> tuple[int, str | None, dict]:
    """(status, X-Backend of the answer, headers) of one GET."""
    async with http.get(url, **kwargs) as resp:
        await resp.read()
        return resp.status, resp.headers.get("X-Backend"), dict(resp.headers)


async def post(http: aiohttp.ClientSession, url: str, data: bytes = b"{}",
               **kwargs: object) -> tuple[int, str | None]:
    async with http.post(url, data=data, **kwargs) as resp:
        await resp.read()
        return resp.status, resp.headers.get("X-Backend")


def pool_config(bs: list[Backend] | str, extra: str = "", pools_extra: str = "") -> str:
    """A one-route, one-pool config; `extra` is more YAML under the pool (8 spaces deep)."""
    backends = bs if isinstance(bs, str) else pool_yaml(bs)
    return f"""
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            backends: {backends}
{extra}
{pools_extra}
        """


async def failing_and_good(start_balancer, backends, name: str, mode: str,
                           attempts: int) -> tuple[Running, Backend, Backend]:
    """Backend `name` answering in `mode` beside one named `good`, round robin; every failure
    condition is retried up to `attempts` times and no backend is ever ejected."""
    failing, good = await backends(name, "good")
    failing.mode = mode
    lb = await start_balancer(pool_config([failing, good], f"""
            balance: round_robin
            retries: {{attempts: {attempts}, on: {ALL_CONDITIONS}}}
            outlier: {{consecutive_failures: 100}}
            """))
    return lb, failing, good


def closed_port_address() -> str:
    """A loopback address nobody listens on: connecting to it is refused at once."""
    return f"127.0.0.1:{free_port()}"


class HangingHealthServer:
    """A backend whose every answer can be held back, as when a host freezes: connections are
    accepted but nothing comes back. Answers `200 ok` while it is not hanging."""

    def __init__(self) -> None:
        self.hang = False
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                while self.hang:
                    await asyncio.sleep(0.01)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-backend: frozen\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        self.hang = False
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


# -- active health checks -------------------------------------------------------------------


async def test_active_check_takes_a_dead_backend_out_in_time_and_back_after_threshold(
        start_balancer, backends, http):
    interval, timeout, unhealthy, healthy = 0.1, 0.1, 3, 3
    b1, b2 = await backends(2)
    lb = await start_balancer(pool_config([b1, b2], f"""
            health_check: {{path: /health, interval: {int(interval * 1000)}ms,
                            timeout: {int(timeout * 1000)}ms,
                            healthy_threshold: {healthy}, unhealthy_threshold: {unhealthy}}}
            """))
    await wait_for(lambda: _checked(lb, http, "b2", 2), HANG_GUARD)
    port = b2.port
    await b2.stop()
    took = await wait_for(lambda: state_is(lb, http, "b2", "unhealthy"), HANG_GUARD)
    # docs/architecture.md: out of rotation within unhealthy_threshold x interval + timeout.
    assert took <= unhealthy * interval * (1 + JITTER) + timeout + SLACK
    samples = await scrape(lb, http)
    assert metric(samples, "balancer_backend_up", pool="web", backend="b2", region="") == 0
    assert metric(samples, "balancer_backend_up", pool="web", backend="b1", region="") == 1
    assert metric(samples, "balancer_backend_state", pool="web", backend="b2", state="unhealthy") == 1
    assert metric(samples, "balancer_backend_state", pool="web", backend="b2", state="healthy") == 0
    assert metric(samples, "balancer_health_checks_total", pool="web", backend="b2",
                  result="failure") >= unhealthy
    answers = [await get(http, lb.url + "/x") for _ in range(10)]
    assert {(status, who) for status, who, _ in answers} == {(200, "b1")}

    successes_before = metric(samples, "balancer_health_checks_total", pool="web", backend="b2",
                              result="success")
    await b2.start(port)
    await wait_for(lambda: state_is(lb, http, "b2", "healthy"), HANG_GUARD)
    samples = await scrape(lb, http)
    # One good probe does not bring it back: it takes healthy_threshold in a row.
    assert metric(samples, "balancer_health_checks_total", pool="web", backend="b2",
                  result="success") - successes_before >= healthy
    assert metric(samples, "balancer_backend_up", pool="web", backend="b2", region="") == 1
    # Thirty asks: idle backends tie and least_conn breaks ties at random.
    answers = [await get(http, lb.url + "/x") for _ in range(30)]
    assert {who for _, who, _ in answers} == {"b1", "b2"}


async def _checked(lb: Running, http: aiohttp.ClientSession, backend: str, n: int) -> bool:
    samples = await scrape(lb, http)
    return metric(samples, "balancer_health_checks_total", pool="web", backend=backend,
                  result="success") >= n


async def test_active_check_takes_a_frozen_backend_out_within_threshold_x_interval_plus_timeout(
        start_balancer, backends, http):
    """A host that accepts connections but never answers costs a full `timeout` per probe;
    the probes must still come every `interval`, or detection takes threshold x (interval +
    timeout) instead of the promised threshold x interval + timeout."""
    interval, timeout, unhealthy = 0.2, 0.15, 3
    frozen = HangingHealthServer()
    await frozen.start()
    (b1,) = await backends(1)
    try:
        lb = await start_balancer(pool_config(
            f"[{{id: frozen, address: '{frozen.address}'}}, {{id: b1, address: '{b1.address}'}}]",
            f"""
            health_check: {{path: /health, interval: {int(interval * 1000)}ms,
                            timeout: {int(timeout * 1000)}ms, unhealthy_threshold: {unhealthy}}}
            """))
        await wait_for(lambda: _checked(lb, http, "frozen", 1), HANG_GUARD)
        frozen.hang = True
        took = await wait_for(lambda: state_is(lb, http, "frozen", "unhealthy"), HANG_GUARD)
        assert took <= unhealthy * interval * (1 + JITTER) + timeout + SLACK
        frozen.hang = False
        await wait_for(lambda: state_is(lb, http, "frozen", "healthy"), HANG_GUARD)
    finally:
        await frozen.stop()


async def test_tcp_check_takes_a_dead_backend_out(start_balancer, backends, http):
    b1, b2 = await backends(2)
    lb = await start_balancer(pool_config([b1, b2], """
            health_check: {tcp: true, interval: 50ms, timeout: 2s, unhealthy_threshold: 2}
            """))
    await b2.stop()
    await wait_for(lambda: state_is(lb, http, "b2", "unhealthy"), HANG_GUARD)
    answers = [await get(http, lb.url + "/x") for _ in range(6)]
    assert {(status, who) for status, who, _ in answers} == {(200, "b1")}


async def test_readyz_names_the_pool_with_no_eligible_backend(start_balancer, backends, http):
    web, wallet = await backends(2)
    lb = await start_balancer(f"""
        routes:
          - {{name: lobby, pool: web, match: {{path_prefix: /lobby}}}}
          - {{name: cashier, pool: wallet}}
        pools:
          web:
            backends: {pool_yaml([web])}
          wallet:
            backends: {pool_yaml([wallet])}
            health_check: {{path: /health, interval: 50ms, timeout: 2s, unhealthy_threshold: 2}}
        """)

    async def ready() -> tuple[int, dict]:
        async with http.get(lb.admin_url + "/readyz") as resp:
            return resp.status, await resp.json()

    await wait_for(lambda: _ready_is(ready, 200), HANG_GUARD)
    wallet.mode = "error500"  # its /health now answers 500
    await wait_for(lambda: _ready_is(ready, 503), HANG_GUARD)
    status, doc = await ready()
    assert doc["reasons"] == ["route cashier: pool wallet has no eligible backend"]
    status, _, headers = await get(http, lb.url + "/cashier/deposit")
    assert status == 503 and headers["Retry-After"] == "1"
    wallet.mode = "ok"
    await wait_for(lambda: _ready_is(ready, 200), HANG_GUARD)


async def _ready_is(ready: Callable[[], Awaitable[tuple[int, dict]]], status: int) -> bool:
    return (await ready())[0] == status


# -- passive outlier detection --------------------------------------------------------------


async def test_consecutive_failures_eject_for_base_times_n_capped_at_max(start_balancer, backends, http):
    b1, b2, b3 = await backends(3)
    b3.mode = "error500"
    lb = await start_balancer(pool_config([b1, b2, b3], """
            balance: round_robin
            retries: {attempts: 1}
            outlier: {consecutive_failures: 3, base_ejection: 2s, max_ejection: 4s,
                      max_ejected_percent: 50}
            """))
    b3_state = lb.app.pools["web"].backends["b3"]
    answers = []
    ejected_by: tuple[float, float] | None = None
    while ejected_by is None:
        before = time.monotonic()
        answers.append(await get(http, lb.url + "/spin"))
        if b3_state.ejections_total:
            ejected_by = (before, time.monotonic())
        assert len(answers) < 30
    # Exactly `consecutive_failures` players saw its 500s, then it was out: while it is
    # ejected nobody reaches it (asked while a good part of the ejection is still ahead).
    while b3_state.ejected_until - time.monotonic() > 1.0 and len(answers) < 30:
        answers.append(await get(http, lb.url + "/spin"))
    assert b3.count() == 3
    statuses = Counter(status for status, _, _ in answers)
    assert statuses[500] == 3 and statuses[200] == len(answers) - 3
    docs = await states(lb, http)
    assert docs["b3"]["state"] == "ejected"
    samples = await scrape(lb, http)
    assert metric(samples, "balancer_backend_ejections_total", pool="web", backend="b3") == 1
    assert metric(samples, "balancer_backend_state", pool="web", backend="b3", state="ejected") == 1
    assert metric(samples, "balancer_backend_up", pool="web", backend="b3", region="") == 0

    # How long each ejection lasts, without timing anything: the ejection was decided while
    # the request that caused it was in flight, so its end (the balancer's `ejected_until`,
    # on the same monotonic clock) less the request's start and end brackets the length it was
    # given, however slow the machine. base_ejection x 1, x 2, then x 3 capped at max_ejection.
    brackets = [(b3_state.ejected_until - ejected_by[1], b3_state.ejected_until - ejected_by[0])]
    for expected_ejections in (2, 3):
        # Back in rotation (an event: /admin/pools says so), still failing: the next three
        # failures eject it again, longer.
        await wait_for(lambda: state_is(lb, http, "b3", "healthy"), 30.0)
        while b3_state.ejections_total < expected_ejections:
            before = time.monotonic()
            await get(http, lb.url + "/spin")
            after = time.monotonic()
        brackets.append((b3_state.ejected_until - after, b3_state.ejected_until - before))
        samples = await scrape(lb, http)
        assert metric(samples, "balancer_backend_ejections_total", pool="web",
                      backend="b3") == expected_ejections
    for (shortest, longest), length in zip(brackets, (2.0, 4.0, 4.0)):
        assert shortest <= length <= longest + 1e-6
    # And it does come back after its time: healthy again without any request.
    await wait_for(lambda: state_is(lb, http, "b3", "healthy"), 30.0)


async def _hit_until_ejected(lb: Running, http: aiohttp.ClientSession, backend: str) -> bool:
    await get(http, lb.url + "/spin")
    return await state_is(lb, http, backend, "ejected")


async def test_max_ejected_percent_keeps_the_rest_in_panic_mode(start_balancer, backends, http):
    bs = await backends(4)
    for b in bs:
        b.mode = "error500"
    lb = await start_balancer(pool_config(bs, """
            balance: round_robin
            retries: {attempts: 1}
            outlier: {consecutive_failures: 2, base_ejection: 30s, max_ejected_percent: 50}
            """))
    answers = [await get(http, lb.url + "/spin") for _ in range(40)]
    samples = await scrape(lb, http)
    ejected = [b.name for b in bs
               if metric(samples, "balancer_backend_ejections_total", pool="web", backend=b.name)]
    # Half of four may be ejected; the other two stay in and keep answering (their 500s).
    assert len(ejected) == 2
    kept = [b for b in bs if b.name not in ejected]
    assert all(b.count() > 10 for b in kept)
    assert all(b.count() == 2 for b in bs if b.name in ejected)
    assert {status for status, _, _ in answers} == {500}
    docs = await states(lb, http)
    assert sorted(name for name, doc in docs.items() if doc["state"] == "ejected") == sorted(ejected)
    assert metric(samples, "balancer_pool_panics_total", pool="web") > 0
    async with http.get(lb.admin_url + "/readyz") as resp:
        assert resp.status == 200  # the pool still has backends to send players to


async def test_retry_after_is_the_time_until_the_earliest_ejection_ends(start_balancer, backends, http):
    (b1,) = await backends(1)
    b1.mode = "error500"
    lb = await start_balancer(pool_config([b1], """
            outlier: {consecutive_failures: 1, base_ejection: 3s, max_ejected_percent: 100}
            """))
    status, _, _ = await get(http, lb.url + "/x")
    assert status == 500
    status, _, headers = await get(http, lb.url + "/x")
    assert status == 503
    assert headers["Retry-After"] == "3"
    assert b1.count() == 1


async def test_recovered_ejected_backend_ramps_up_under_slow_start(start_balancer, backends, http):
    """After its ejection, a backend starts at a small share of the traffic and only gets its
    full share once `slow_start` has passed (round robin: share follows weight)."""
    b1, b2 = await backends(2)
    b2.mode = "error500"
    lb = await start_balancer(pool_config([b1, b2], """
            balance: round_robin
            slow_start: 10s
            retries: {attempts: 1}
            outlier: {consecutive_failures: 1, base_ejection: 200ms, max_ejected_percent: 50}
            """))
    await wait_for(lambda: _hit_until_ejected(lb, http, "b2"), 30.0, step=0)
    b2.mode = "ok"
    await wait_for(lambda: state_is(lb, http, "b2", "healthy"), 30.0)
    early = Counter([(await get(http, lb.url + "/x"))[1] for _ in range(40)])
    await ramp_over(lb, "b2", 10.0)
    late = Counter([(await get(http, lb.url + "/x"))[1] for _ in range(40)])
    assert early["b2"] <= 12  # ~10-30% of its weight in the first moments of the ramp
    assert 18 <= late["b2"] <= 22  # full weight: an even split


async def test_recovered_backend_ramps_up_under_slow_start_with_least_conn(start_balancer, backends, http):
    """least_conn divides load by effective weight: a backend just back from an outage takes a
    small share of concurrent players at first, its full share once the ramp is over."""
    b1, b2 = await backends(2)
    # The probe timeout is a hang guard (2 s): the outage is a fast 500, and a probe that
    # merely waited for a busy CPU must not mark a backend down and restart its ramp.
    lb = await start_balancer(pool_config([b1, b2], """
            balance: least_conn
            slow_start: 10s
            health_check: {path: /health, interval: 50ms, timeout: 2s,
                           healthy_threshold: 1, unhealthy_threshold: 1}
            """))
    b2.mode = "error500"
    await wait_for(lambda: state_is(lb, http, "b2", "unhealthy"), 30.0)
    b2.mode = "ok"
    await wait_for(lambda: state_is(lb, http, "b2", "healthy"), 30.0)
    backends_now = lb.app.pools["web"].backends
    ramp_start = backends_now["b2"].ramp_start
    early = await _concurrent_share(lb, http, "b2")
    await ramp_over(lb, "b2", 10.0)
    late = await _concurrent_share(lb, http, "b2")
    # One ramp, from the recovery: neither backend went down again during the samples.
    assert backends_now["b2"].ramp_start == ramp_start and not backends_now["b1"].ramp_start
    assert early < 0.3
    assert late > 0.4


async def ramp_over(lb: Running, backend: str, slow_start: float) -> None:
    """Wait until the backend's slow start has run its course (its ramp began when it came
    back, on the monotonic clock; 0.0 once over). A ramp of 10 s leaves the early sample, taken
    first, well inside it even on a busy machine."""
    state = lb.app.pools["web"].backends[backend]
    while state.ramp_start and time.monotonic() < state.ramp_start + slow_start:
        await asyncio.sleep(min(0.2, max(0.01, state.ramp_start + slow_start - time.monotonic())))


async def _concurrent_share(lb: Running, http: aiohttp.ClientSession, backend: str) -> float:
    """Share of 4 rounds of 8 concurrent slow-ish GETs that `backend` answered."""
    who: Counter[str | None] = Counter()
    for _ in range(4):
        answers = await asyncio.gather(*(get(http, lb.url + "/stream/262144") for _ in range(8)))
        who.update(w for _, w, _ in answers)
    return who[backend] / sum(who.values())


# -- retries -------------------------------------------------------------------------------


async def test_attempts_count_tries_in_total_and_never_repeat_a_backend(start_balancer, backends, http):
    bs = await backends(3)
    for b in bs:
        b.mode = "reset"
    lb = await start_balancer(pool_config(bs, f"""
            retries: {{attempts: 2, on: {ALL_CONDITIONS}}}
            outlier: {{consecutive_failures: 100}}
            """))
    status, _, headers = await get(http, lb.url + "/x")
    assert status == 502
    assert headers["Content-Type"] == "application/json"
    assert sorted(b.count() for b in bs) == [0, 1, 1]
    samples = await scrape(lb, http)
    assert metric(samples, "balancer_retries_total", pool="web") == 1
    assert sum(metric(samples, "balancer_upstream_errors_total", pool="web", backend=b.name,
                      kind="reset") for b in bs) == 2

    # More attempts than backends: each backend once, then 502.
    lb2 = await start_balancer(pool_config(bs, f"""
            retries: {{attempts: 5, on: {ALL_CONDITIONS}}}
            outlier: {{consecutive_failures: 100}}
            """))
    status, _, _ = await get(http, lb2.url + "/y")
    assert status == 502
    assert [b.count("GET", "/y") for b in bs] == [1, 1, 1]
    samples = await scrape(lb2, http)
    assert metric(samples, "balancer_retries_total", pool="web") == 2


async def test_one_backend_pool_answers_502_or_504_at_once(start_balancer, backends, http):
    (b1,) = await backends(1)
    lb = await start_balancer(pool_config([b1], f"""
            retries: {{attempts: 3, on: {ALL_CONDITIONS}}}
            timeouts: {{response: 300ms}}
            outlier: {{consecutive_failures: 100}}
            """))
    b1.mode = "reset"
    status, _, _ = await get(http, lb.url + "/reset")
    assert status == 502 and b1.count("GET", "/reset") == 1
    b1.mode = "hang"
    b1.hang_seconds = 2.0
    status, _, _ = await get(http, lb.url + "/hang")
    # The balancer's own response timeout: 504, after one timeout, not after three.
    # (The backend answers after 2 s: a 504 is the balancer's own timeout, and a single
    # request at the backend shows the timeout was not retried.)
    assert status == 504
    assert b1.count("GET", "/hang") == 1
    b1.mode = "status:503"
    status, _, _ = await get(http, lb.url + "/busy")
    # Nowhere else to go: the backend's own 503 is the answer, not a made-up 502.
    assert status == 503 and b1.count("GET", "/busy") == 1
    samples = await scrape(lb, http)
    assert metric(samples, "balancer_retries_total", pool="web") == 0

    lb_dead = await start_balancer(pool_config(f"[{{id: gone, address: '{closed_port_address()}'}}]",
                                               "            retries: {attempts: 3}"))
    status, _, _ = await get(http, lb_dead.url + "/x")
    assert status == 502


async def test_connect_failure_is_retried_for_a_post(start_balancer, backends, http):
    (live,) = await backends(1)
    lb = await start_balancer(pool_config(
        f"[{{id: gone, address: '{closed_port_address()}'}}, {{id: b1, address: '{live.address}'}}]",
        """
            balance: round_robin
            retries: {attempts: 2, on: [connect_failure]}
            outlier: {consecutive_failures: 100}
            """))
    answers = [await post(http, lb.url + "/bet", data=b'{"stake": 5}') for _ in range(6)]
    assert answers == [(200, "b1")] * 6
    assert live.count("POST", "/bet") == 6
    samples = await scrape(lb, http)
    assert metric(samples, "balancer_retries_total", pool="web") == 3  # every other one
    assert metric(samples, "balancer_upstream_errors_total", pool="web", backend="gone",
                  kind="connect") == 3


async def test_a_post_that_reached_a_backend_is_never_sent_again(start_balancer, backends, http):
    lb, flaky, good = await failing_and_good(start_balancer, backends, "flaky", "reset", attempts=3)
    answers = [await post(http, lb.url + "/bet", data=b'{"stake": 5}') for _ in range(6)]
    assert Counter(answers) == Counter({(502, None): 3, (200, "good"): 3})
    # Six bets, six deliveries: the three that hit the resetting backend were not replayed.
    assert flaky.count("POST", "/bet") == 3
    assert good.count("POST", "/bet") == 3
    samples = await scrape(lb, http)
    assert metric(samples, "balancer_retries_total", pool="web") == 0

    # The same failure is retried for a GET, and for a POST that carries Idempotency-Key.
    answers_get = [await get(http, lb.url + "/lobby") for _ in range(4)]
    assert {(status, who) for status, who, _ in answers_get} == {(200, "good")}
    keyed = [await post(http, lb.url + "/withdraw", headers={"Idempotency-Key": f"k{i}"})
             for i in range(4)]
    assert {status for status, _ in keyed} == {200}
    assert good.count("POST", "/withdraw") == 4
    samples = await scrape(lb, http)
    assert metric(samples, "balancer_retries_total", pool="web") == 4


async def test_5xx_is_retried_only_for_idempotent_requests(start_balancer, backends, http):
    lb, busy, good = await failing_and_good(start_balancer, backends, "busy", "status:503", attempts=2)
    gets = [await get(http, lb.url + "/lobby") for _ in range(4)]
    assert {status for status, _, _ in gets} == {200}
    assert busy.count("GET", "/lobby") == 2 and good.count("GET", "/lobby") == 4
    posts = [await post(http, lb.url + "/bet") for _ in range(4)]
    # The busy backend's 503 goes to the player as it is; the bet is not sent elsewhere.
    assert Counter(status for status, _ in posts) == Counter({503: 2, 200: 2})
    assert busy.count("POST", "/bet") == 2 and good.count("POST", "/bet") == 2
    # A retried response must release its backend: nothing is left counted as in flight.
    docs = await states(lb, http)
    assert docs["busy"]["active_requests"] == 0 and docs["good"]["active_requests"] == 0
    samples = await scrape(lb, http)
    assert metric(samples, "balancer_retries_total", pool="web") == 2


async def test_a_body_streamed_past_the_retry_buffer_is_not_replayed(start_balancer, backends, http):
    lb, flaky, good = await failing_and_good(start_balancer, backends, "flaky", "reset", attempts=2)
    small = b"s" * (RETRY_BUFFER // 2)
    big = b"b" * (RETRY_BUFFER * 2)
    results = []
    for body in (small, small, big, big):
        async with http.put(lb.url + "/profile", data=body) as resp:
            payload = await resp.json()
            results.append((resp.status, payload.get("body_bytes")))
    # Round robin alternates: the small PUT that hit the resetting backend was replayed whole;
    # the big one had streamed past the buffer and fails with a clear 502.
    assert Counter(results) == Counter({(200, len(small)): 2, (200, len(big)): 1, (502, None): 1})
    assert flaky.count("PUT", "/profile") == 2
    assert good.count("PUT", "/profile") == 3


async def test_504_means_the_balancers_own_response_timeout(start_balancer, backends, http):
    slow, good = await backends("slow", "good")
    slow.mode = "hang"
    slow.hang_seconds = 2.0
    yaml_tail = """
            balance: round_robin
            timeouts: {response: 200ms}
            outlier: {consecutive_failures: 100}
            """
    lb = await start_balancer(pool_config([slow, good], "            retries: {attempts: 2, on: [504]}\n"
                                          + yaml_tail))
    gets = [await get(http, lb.url + "/lobby") for _ in range(2)]
    assert [(s, w) for s, w, _ in gets] == [(200, "good"), (200, "good")]
    posts = [await post(http, lb.url + "/bet") for _ in range(2)]
    assert sorted(status for status, _ in posts) == [200, 504]
    assert slow.count("POST", "/bet") == 1 and good.count("POST", "/bet") == 1
    samples = await scrape(lb, http)
    assert metric(samples, "balancer_retries_total", pool="web") == 1
    assert metric(samples, "balancer_upstream_errors_total", pool="web", backend="slow",
                  kind="timeout") == 2

    lb_no504 = await start_balancer(pool_config([slow, good], "            retries: {attempts: 2, on: [reset]}\n"
                                                + yaml_tail))
    gets = [(await get(http, lb_no504.url + "/lobby"))[0] for _ in range(2)]
    assert sorted(gets) == [200, 504]


async def test_all_backends_timing_out_answers_504_not_502(start_balancer, backends, http):
    bs = await backends(2)
    for b in bs:
        b.mode = "hang"
        b.hang_seconds = 2.0
    lb = await start_balancer(pool_config(bs, """
            retries: {attempts: 3, on: [504]}
            timeouts: {response: 150ms}
            outlier: {consecutive_failures: 100}
            """))
    status, _, _ = await get(http, lb.url + "/lobby")
    assert status == 504
    assert [b.count("GET", "/lobby") for b in bs] == [1, 1]


# -- connection cap ------------------------------------------------------------------------


async def test_a_full_backend_is_not_eligible_and_a_full_pool_answers_503(start_balancer, backends, http):
    b1, b2 = await backends(2)
    for b in (b1, b2):
        b.mode = "hang"
        b.hang_seconds = 0.5
    lb = await start_balancer(pool_config([b1, b2], """
            balance: round_robin
            max_connections_per_backend: 1
            """))
    first = asyncio.ensure_future(get(http, lb.url + "/a"))
    await wait_for(lambda: _busy(lb, http, 1), HANG_GUARD)
    second = asyncio.ensure_future(get(http, lb.url + "/b"))
    await wait_for(lambda: _busy(lb, http, 2), HANG_GUARD)
    # Round robin would now go back to the first backend, but it is full; so is the other.
    status, _, headers = await get(http, lb.url + "/c")
    assert status == 503
    assert headers["Retry-After"] == "1"
    assert [b1.count("GET", "/c"), b2.count("GET", "/c")] == [0, 0]
    async with http.get(lb.admin_url + "/readyz") as resp:
        assert resp.status == 503  # eligible includes "under the cap" (docs/decisions.md)
    results = await asyncio.gather(first, second)
    assert sorted(who for _, who, _ in results) == ["b1", "b2"]
    assert {status for status, _, _ in results} == {200}
    for b in (b1, b2):
        b.mode = "ok"
    status, _, _ = await get(http, lb.url + "/d")
    assert status == 200


async def _busy(lb: Running, http: aiohttp.ClientSession, n: int) -> bool:
    docs = await states(lb, http)
    return sum(doc["active_requests"] for doc in docs.values()) == n


async def test_money_rules_per_http2_stream(start_balancer, backends):
    """Streams of one HTTP/2 connection follow the same money rules as HTTP/1.1 requests: a bet
    that reached a backend which then failed is answered 502 and never sent again; a GET that
    met the same failure is retried on the other backend."""
    flaky, good = await backends("flaky", "good")
    flaky.mode = "reset"
    lb = await start_balancer(pool_config([flaky, good], f"""
            balance: round_robin
            retries: {{attempts: 3, on: {ALL_CONDITIONS}}}
            outlier: {{consecutive_failures: 100}}
            """), listeners="listeners:\n  - name: h2c\n    address: 127.0.0.1:0\n    http2: true\n")
    player = await H2Client.open(lb.port("h2c"))
    try:
        bets = [(await player.request("POST", "/bet", body=b'{"stake": 5}')).status for _ in range(6)]
        assert Counter(bets) == Counter({502: 3, 200: 3})
        assert flaky.count("POST", "/bet") == 3 and good.count("POST", "/bet") == 3
        lobby = [(await player.request("GET", "/lobby")).status for _ in range(4)]
        assert lobby == [200] * 4
        assert good.count("GET", "/lobby") == 4
    finally:
        player.close()
