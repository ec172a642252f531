"""Consul that misbehaves (docs/operations.md, "When Consul is down or erroring").

An agent that accepts a query and never answers, answers late, answers with garbage, or with
429 or 500: the last known backends stay in service, the outage is logged once (one warning
however many queries fail), and the recovery is noticed (one info line, and a change made
during the outage is applied). The faults are the Consul double's (tests/fakes/consul.py,
`misbehave` and `fail`).
"""

from __future__ import annotations

import logging

import aiohttp
import pytest

from tests.conftest import Running
from tests.fakes.backends import Backend
from tests.fakes.consul import FakeConsul
from tests import waiting

SERVICE = "games"
# A hang guard for a busy machine, not a performance claim: a query that gets no answer is
# given up after wait + wait/16 + 5 s (balancer/discovery/consul.py), two of them ~13 s.
PATIENCE = 60.0


def config(consul: FakeConsul) -> str:
    return f"""
        consul: {{address: "{consul.address}", wait: 1s}}
        routes:
          - {{name: all, pool: games}}
        pools:
          games:
            discovery: {{consul: {{service: {SERVICE}}}}}
        """


def register(consul: FakeConsul, backend: Backend) -> None:
    consul.add_instance(SERVICE, backend.name, address="127.0.0.1", port=backend.port)


async def until(check, what: str) -> None:
    await waiting.until(check, what, PATIENCE, step=0.05)


async def backend_of(http: aiohttp.ClientSession, lb: Running) -> str | None:
    async with http.get(lb.url + "/lobby") as resp:
        await resp.read()
        return resp.headers.get("X-Backend") if resp.status == 200 else f"status {resp.status}"


async def serving_g1(start_balancer, backends, consul: FakeConsul,
                     http: aiohttp.ClientSession) -> tuple[Running, Backend]:
    """The balancer with pool `games` from Consul, serving g1; g2 started, not registered."""
    g1, g2 = await backends("g1", "g2")
    register(consul, g1)
    lb = await start_balancer(config(consul))

    async def served_by_g1() -> bool:
        return await backend_of(http, lb) == "g1"
    await until(served_by_g1, "g1 discovered")
    return lb, g2


FAULTS = {
    "never-answers": lambda consul: consul.misbehave("hang", path="/v1/health"),
    "garbage-json": lambda consul: consul.misbehave("garbage", path="/v1/health"),
    "429": lambda consul: consul.fail(429, "rate limit exceeded"),
    "500": lambda consul: consul.fail(500, "No cluster leader"),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
async def test_a_misbehaving_consul_keeps_the_last_backends_logs_once_and_notices_recovery(
        start_balancer, backends, consul, http, caplog, fault):
    caplog.set_level(logging.INFO, logger="balancer.consul")
    lb, g2 = await serving_g1(start_balancer, backends, consul, http)

    watch = lb.app.control.watches["games"]
    errors_before = watch.updates["error"]
    fault(consul)

    def failing(times: int):
        async def check() -> bool:
            # Players are served by what the balancer last knew, all along the outage.
            assert await backend_of(http, lb) == "g1"
            return watch.updates["error"] >= errors_before + times
        return check
    await until(failing(1), "a failed query")
    register(consul, g2)  # a change Consul cannot tell while it misbehaves
    await until(failing(2), "two failed queries")
    warnings = [r for r in caplog.records
                if r.levelno == logging.WARNING and "query for service 'games'" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "keeping the 1 last known backends" in warnings[0].getMessage()

    consul.recover()
    seen: set[str | None] = set()

    async def both_served() -> bool:
        seen.add(await backend_of(http, lb))
        return {"g1", "g2"} <= seen
    await until(both_served, "the change made during the outage applied")
    assert seen == {"g1", "g2"}
    recovered = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(recovered) == 1


async def test_a_slow_consul_is_waited_for_and_nothing_is_lost(start_balancer, backends, consul, http, caplog):
    caplog.set_level(logging.INFO, logger="balancer.consul")
    lb, g2 = await serving_g1(start_balancer, backends, consul, http)
    # Answers two seconds late (within what the watch waits for an answer): not an outage.
    consul.misbehave("slow", path="/v1/health", delay=2.0)
    register(consul, g2)
    seen: set[str | None] = set()

    async def both_served() -> bool:
        seen.add(await backend_of(http, lb))
        return {"g1", "g2"} <= seen
    await until(both_served, "g2 discovered through a slow Consul")
    assert seen == {"g1", "g2"}
    assert lb.app.control.watches["games"].updates["error"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
