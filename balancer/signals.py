"""SIGTERM and SIGINT from exec on: a stop asked at any moment is a clean stop.

Until an event loop handles them, the signals only note that a stop was asked (Python's
default would end the process at once, with Consul registration and workers left behind);
whoever is at a safe point asks `stop_requested()` or, once its loop runs, hands them to the
loop with `stop_on_signals`, which acts at once on a stop noted before. SIGHUP is ignored
until the loop takes it too: the config being loaded is the one a reload would read; so is
SIGUSR1 (logrotate's "reopen the access log", which is opened at start anyway).
"""

from __future__ import annotations

import asyncio
import signal
from typing import Callable

_requested = False
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _note(signum: int, frame: object) -> None:
    global _requested
    _requested = True


def note_early() -> None:
    """From now on a SIGTERM/SIGINT is noted, not fatal (the first thing `balancer run` does)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _note)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # reopening the access log: not opened yet


def stop_requested() -> bool:
    return _requested


def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    """The loop calls `stop` on SIGTERM/SIGINT; at once if one came already."""
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)
    if _requested:
        stop()
