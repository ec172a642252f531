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


# How often the idle sweep looks at its tunnels: each SWEEP_INTERVAL (a WebSocket idle limit
# is minutes or hours), or each quarter of the shortest limit when that is shorter, so that a
# short one (tests, a strict operator) is kept to within a quarter of it.
SWEEP_INTERVAL = 1.0
SWEEP_INTERVAL_MIN = 0.01


class IdleSweep:
    """The idle limit of every WebSocket tunnel of one event loop, under one timer.

    A tunnel lives for hours and its traffic comes in small frames: an armed timer handle per
    tunnel (with libuv's timer behind it) costs more memory than the rest of an idle tunnel's
    state. Instead, traffic only raises the tunnel's `idle_active` flag (no clock read, no
    timer), and one sweep per SWEEP_INTERVAL lowers the flags it finds raised and closes the
    tunnels that stayed quiet for their `idle_limit()`: closed between the limit and the limit
    plus one sweep interval after their last byte.

    A tunnel offers `idle_active`, `idle_since` (loop time), `idle_limit()` and
    `idle_expired()`, and is in a group (its backend's set of open tunnels) until it ends: the
    sweep walks the groups rather than a set of its own, one set entry less per tunnel
    (~50 bytes at 10,000).
    """

    __slots__ = fields(__name__, "IdleSweep")  # its .pxd declares them

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._groups: dict[int, set] = {}  # id -> a group of tunnels, while not empty
        self._handle: asyncio.TimerHandle | None = None
        self._interval = SWEEP_INTERVAL

    def __len__(self) -> int:
        return sum(len(group) for group in self._groups.values())

    def add(self, tunnel: object, limit: float, group: set) -> None:
        """Watch `tunnel`, a member of `group` until it ends (it leaves by itself)."""
        tunnel.idle_active = False  # type: ignore[attr-defined]
        tunnel.idle_since = self._loop.time()  # type: ignore[attr-defined]
        self._groups[id(group)] = group
        interval = max(SWEEP_INTERVAL_MIN, min(SWEEP_INTERVAL, limit / 4))
        if self._handle is None or interval < self._interval:
            if self._handle is not None:
                self._handle.cancel()
            self._interval = interval
            self._handle = self._loop.call_later(interval, self._sweep, context=_CONTEXT)

    def _sweep(self) -> None:
        now = self._loop.time()
        expired = []
        for key, group in list(self._groups.items()):
            if not group:
                del self._groups[key]
            for tunnel in group:
                if tunnel.idle_active:
                    tunnel.idle_active = False
                    tunnel.idle_since = now
                elif now - tunnel.idle_since >= tunnel.idle_limit():
                    expired.append(tunnel)
        for tunnel in expired:
            tunnel.idle_expired()  # ends it: it leaves its group
        if self._groups:
            self._handle = self._loop.call_later(self._interval, self._sweep, context=_CONTEXT)
        else:
            self._handle = None
            self._interval = SWEEP_INTERVAL


_sweep_loop: object = None
_loop_sweep: IdleSweep | None = None


def idle_sweep(loop: asyncio.AbstractEventLoop) -> IdleSweep:
    """The loop's one IdleSweep."""
    global _sweep_loop, _loop_sweep
    if loop is not _sweep_loop or _loop_sweep is None:
        _sweep_loop, _loop_sweep = loop, IdleSweep(loop)
    return _loop_sweep
