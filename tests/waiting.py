"""Waiting for events: tests poll what a user could observe until it holds.

The only clock here is a hang guard: it ends a test whose event never comes, and is generous
enough for a machine whose cores are all busy (`make test-stress`), so it is never what
decides whether a test passes.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

HANG_GUARD = 30.0


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str = "condition",
                timeout: float = HANG_GUARD, step: float = 0.01) -> float:
    """Poll `condition` (plain or async) until it holds; returns how long that took."""
    start = time.monotonic()
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"not within {timeout:g}s: {what}"
        await asyncio.sleep(step)


async def eventually(condition: Callable[[], bool | Awaitable[bool]],
                     timeout: float = HANG_GUARD) -> bool:
    """Whether `condition` came to hold within the hang guard (for `assert await ...`)."""
    try:
        await until(condition, timeout=timeout, step=0.02)
    except AssertionError:
        return False
    return True
