"""The control process's line to a worker: a worker that vanishes ends every question to it.

A worker killed while the instance stops can reset its end of the socket pair instead of
closing it; the control process must take that as the worker gone (not a crash of its reader
that leaves questions waiting for the reply timeout, and the worker counted as alive).
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from balancer.messages import Snapshot
from balancer.workers import WorkerHandle
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
