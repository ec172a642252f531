"""The line between the control process and a worker, from both ends.

A worker killed while the instance stops can reset its end of the socket pair instead of
closing it; the control process must take that as the worker gone (not a crash of its reader
that leaves questions waiting for the reply timeout, and the worker counted as alive).

A worker may read the control process's first Consul sets and health states before its own
start-up has run; they must not be lost (no second copy comes until Consul changes).
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from balancer.app import App
from balancer.config import Address, BackendConfig
from balancer.config_file import parse_config
from balancer.messages import Discovered, Health, Snapshot
from balancer.workers import ControlLink, WorkerHandle
from tests.waiting import HANG_GUARD


@pytest.mark.parametrize("ending", ["closed", "reset"])
async def test_a_worker_gone_fails_its_pending_questions_and_is_no_longer_alive(ending: str) -> None:
    control_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    handle = WorkerHandle(pid=0, sock=control_end)
    await handle.start()
    question = asyncio.get_running_loop().create_future()
    handle.pending[1] = question
    # The worker has sent half a line when it goes: nothing of it may be taken as a reply.
    worker_end.sendall(b'{"half')
    if ending == "reset":
        # A unix socket closed with unread data makes its peer read ECONNRESET.
        handle.send(Snapshot(), 1)
        await handle.writer.drain()
    worker_end.close()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(question, HANG_GUARD)
    assert handle.alive is False
    handle.writer.close()


async def test_a_worker_keeps_what_the_control_process_says_before_the_worker_has_started() -> None:
    config = parse_config({
        "listeners": [{"name": "public", "address": "127.0.0.1:0"}],
        "routes": [{"name": "all", "pool": "games"}],
        "pools": {"games": {"discovery": {"consul": {"service": "games"}}}},
    }, "test.yaml")
    app = App(config, None, asyncio.get_running_loop(), control=False)
    link = ControlLink(app, socket.socket())  # never started: messages are handed straight in
    g1 = BackendConfig("g1", Address("127.0.0.1", 9001), source="consul")
    await link.handle(Discovered("games", (g1,)))
    await link.handle(Health({"games": {"g1": (False, 0.0)}}))
    backend = app.runtime.pools["games"].pool.get("g1")
    assert backend is not None, "the Consul set sent before start-up was dropped"
    assert backend.healthy is False, "the health state sent before start-up was dropped"
    link.sock.close()
