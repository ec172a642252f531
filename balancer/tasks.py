"""Fire-and-forget tasks that cannot vanish half-way.

The event loop keeps only weak references to tasks (asyncio docs, `create_task`): a task that
nothing else holds may be garbage-collected before it finishes. Tasks started for one request
(opening a backend connection, an async plugin hook) or one accepted socket are kept here until
they are done.
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine

_RUNNING: set[asyncio.Task[Any]] = set()


def spawn(coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    task = asyncio.get_running_loop().create_task(coroutine)
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
    return task
