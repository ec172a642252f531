"""A lazily re-armed deadline: one timer handle per connection, not one per request.

Moving a deadline later (the common case: every request, every body chunk) only stores a
float; the armed handle notices on firing that the deadline moved and re-arms itself. This is
how HAProxy and Envoy keep timeouts cheap on busy connections.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Callable

from ..compiled import fields


# The context timer callbacks run in. The data plane keeps no context variables; without it the
# loop would copy the current context for every armed timer (an object per idle connection).
_CONTEXT = contextvars.Context()


_clock_loop: object = None
_clock: Callable[[], float] | None = None


def _clock_of(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """`loop.time`, one bound method per loop rather than one per deadline (two per
    connection, kept as long as the connection: hours for a WebSocket)."""
    global _clock_loop, _clock
    if loop is not _clock_loop or _clock is None:
        _clock_loop, _clock = loop, loop.time
    return _clock


class Deadline:
    __slots__ = fields(__name__, "Deadline")  # its .pxd declares them

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._time = _clock_of(loop)  # bound once: set_in runs several times per request
        self._callback = callback
        self.when = 0.0  # loop time; 0.0 = not set
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = 0.0  # when the handle fires (kept here: asking the handle is a call)

    def set_in(self, seconds: float) -> None:
        self.set_at(self._time() + seconds)

    def set_at(self, when: float) -> None:
        """Due at loop time `when` (for callers that just read the loop clock)."""
        # Runs several times per request: no new handle unless earlier.
        self.when = when
        handle = self._handle
        if handle is None:
            self._arm(when)
        elif self._armed_at > when:
            handle.cancel()
            self._arm(when)

    def _arm(self, when: float) -> None:
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._fire, context=_CONTEXT)

    def clear(self) -> None:
        self.when = 0.0

    def cancel(self) -> None:
        self.when = 0.0
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        when = self.when
        if when == 0.0:
            return
        if self._time() < when:
            self._arm(when)
            return
        self.when = 0.0
        self._callback()
