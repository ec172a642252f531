"""When a failed request may reach a backend again: the money rules, as one pure function.

A bet or a withdrawal is never sent twice (docs/architecture.md, "Forwarding"). The exchange
(of an HTTP/1.1 connection or an HTTP/2 stream alike) states the facts of a failure and acts on
the answer; nothing here does I/O or knows a connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .http.errors import CONNECT, PROTOCOL, RESET, STALE, TIMEOUT
from .http.methods import ALLOWED_METHODS

if TYPE_CHECKING:
    from .http.parser import RequestHead

# RFC 9110 §9.2.2: these may be repeated without changing the outcome, so they may be retried.
# The parser's own objects, which every request head carries: a set lookup then matches by
# identity instead of comparing bytes (about 100 instructions per request, docs/decisions.md).
IDEMPOTENT_METHODS: frozenset[bytes] = frozenset(
    method for method in ALLOWED_METHODS if method in (b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"))

# What may_retry answers.
GIVE_UP = 0  # the failure is the answer (502/504, the backend's 5xx, or an aborted response)
RESEND = 1  # once more to the same backend on a fresh connection, outside retries.attempts
RETRY = 2  # to another backend, counted in retries.attempts

# An upstream failure kind -> the name retries.on gives it (a 5xx status is its own name).
CONDITION = {CONNECT: "connect_failure", RESET: "reset", TIMEOUT: "504", PROTOCOL: "reset",
             STALE: "reset"}


def safe_to_repeat(head: RequestHead) -> bool:
    """May this request reach a backend twice? Idempotent methods, and requests carrying an
    Idempotency-Key (the backend then recognises the repeat)."""
    return head.method in IDEMPOTENT_METHODS or head.header(b"idempotency-key") is not None


def may_retry(failure: str, safe: bool, replayable: bool, response_started: bool, tunnel: bool,
              tried: int, attempts: int, retry_on: frozenset[str]) -> int:
    """GIVE_UP, RESEND or RETRY after `failure` (a kind of http/errors.py, or a 5xx status as
    text). `safe`: safe_to_repeat; `replayable`: every body byte sent is still kept to send
    again; `tried`: backends tried so far; `attempts`, `retry_on`: the pool's `retries`."""
    if response_started:
        return GIVE_UP  # half a response cannot be mended: the player must see it broken
    if failure == STALE and safe and replayable:
        # A pooled connection the backend had closed: the backend is not at fault and nothing
        # reached it, or only what may be sent twice.
        return RESEND
    if tried >= attempts or tunnel:
        return GIVE_UP
    condition = CONDITION.get(failure, failure)
    if condition not in retry_on and not (failure == TIMEOUT and "timeout" in retry_on):
        return GIVE_UP
    if failure == CONNECT:
        return RETRY  # nothing was sent: safe for every method
    # Anything else may have reached the backend: only what is safe to repeat, and only if
    # every body byte sent is still here to send again.
    return RETRY if safe and replayable else GIVE_UP
