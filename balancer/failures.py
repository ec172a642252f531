"""Why a backend could not be reached, kept for /admin/pools and logged (not on every failure).

A refused connection, a timeout and a certificate that does not verify all count the same for
retries and outlier detection (a connect failure); the reason is what tells an operator which
one it is. A failing backend may fail thousands of times a second, so the log says it when the
reason changes, and otherwise at most every LOG_INTERVAL seconds per backend.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pool import Backend

log = logging.getLogger("balancer.upstream")

LOG_INTERVAL = 10.0
_logged: dict[tuple[str, str], tuple[str, float]] = {}  # (pool, backend id) -> (reason, when)


def describe(exc: BaseException, timeout: float | None = None) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate not accepted: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: handshake failed: {exc.reason or exc}"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return f"no connection within {timeout:g}s" if timeout is not None else "timed out"
    return f"{type(exc).__name__}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)


def note(backend: Backend, reason: str) -> None:
    """Remember `reason` as the backend's latest failure; log it unless just logged."""
    now = time.time()
    backend.last_failure = (reason, now)
    key = (backend.pool_name, backend.id)
    previous = _logged.get(key)
    if previous is not None and previous[0] == reason and now - previous[1] < LOG_INTERVAL:
        return
    if len(_logged) > 65536:
        _logged.clear()
    _logged[key] = (reason, now)
    log.warning("backend %s/%s (%s): cannot connect: %s", backend.pool_name, backend.id,
                backend.address, reason)


def connect_failed(backend: Backend, exc: BaseException, timeout: float) -> None:
    note(backend, describe(exc, timeout))
