"""The money rules (balancer/retries.py) as a table: after which failure may a request reach a
backend again? A bet or a withdrawal is never sent twice (docs/architecture.md, "Forwarding")."""

from __future__ import annotations

import pytest

from balancer.http.errors import CONNECT, PROTOCOL, RESET, STALE, TIMEOUT
from balancer.http.parser import RequestHead
from balancer.retries import GIVE_UP, RESEND, RETRY, may_retry, safe_to_repeat


def head(method: bytes, *headers: tuple[bytes, bytes]) -> RequestHead:
    h = RequestHead()
    h.method = method
    h.headers = [(name.lower(), name, value) for name, value in headers]
    return h


@pytest.mark.parametrize("request_head, safe", [
    (head(b"GET"), True),
    (head(b"HEAD"), True),
    (head(b"OPTIONS"), True),
    (head(b"PUT"), True),
    (head(b"DELETE"), True),
    (head(b"POST"), False),  # a bet
    (head(b"PATCH"), False),
    (head(b"POST", (b"Idempotency-Key", b"bet-42")), True),  # the backend recognises the repeat
    (head(b"POST", (b"X-Idempotency", b"bet-42")), False),
])
def test_what_is_safe_to_send_twice(request_head: RequestHead, safe: bool) -> None:
    assert safe_to_repeat(request_head) is safe


ALL = frozenset({"connect_failure", "reset", "timeout", "502", "503", "504"})
CONNECT_ONLY = frozenset({"connect_failure"})

# failure, safe, replayable, response started, tunnel, tried, attempts, retries.on -> answer
MONEY_RULES = [
    # Never sent: any method may go to another backend, within retries.attempts.
    (CONNECT, False, True, False, False, 1, 2, CONNECT_ONLY, RETRY),
    (CONNECT, False, False, False, False, 1, 2, CONNECT_ONLY, RETRY),
    (CONNECT, True, True, False, False, 2, 2, CONNECT_ONLY, GIVE_UP),  # attempts used up
    (CONNECT, True, True, False, False, 1, 2, frozenset(), GIVE_UP),  # not in retries.on
    # May have reached the backend: only what is safe to repeat and still fully kept.
    (RESET, True, True, False, False, 1, 2, ALL, RETRY),
    (RESET, False, True, False, False, 1, 2, ALL, GIVE_UP),  # a POST that may have moved money
    (RESET, True, False, False, False, 1, 2, ALL, GIVE_UP),  # its body streamed past the buffer
    (RESET, True, True, False, False, 1, 2, CONNECT_ONLY, GIVE_UP),
    (PROTOCOL, True, True, False, False, 1, 2, ALL, RETRY),  # named "reset" in retries.on
    (TIMEOUT, True, True, False, False, 1, 2, frozenset({"504"}), RETRY),
    (TIMEOUT, True, True, False, False, 1, 2, frozenset({"timeout"}), RETRY),
    (TIMEOUT, False, True, False, False, 1, 2, ALL, GIVE_UP),
    ("503", True, True, False, False, 1, 2, ALL, RETRY),  # the backend's own 5xx
    ("503", False, True, False, False, 1, 2, ALL, GIVE_UP),
    ("502", True, True, False, False, 1, 2, frozenset({"503"}), GIVE_UP),
    # A pooled connection the backend had closed: resent to the same backend, outside attempts.
    (STALE, True, True, False, False, 2, 2, CONNECT_ONLY, RESEND),
    (STALE, False, True, False, False, 1, 2, ALL, GIVE_UP),  # a POST is never resent
    (STALE, True, False, False, False, 1, 2, ALL, GIVE_UP),
    # Half a response reached the player: nothing can be mended.
    (RESET, True, True, True, False, 1, 2, ALL, GIVE_UP),
    (TIMEOUT, True, True, True, False, 1, 2, ALL, GIVE_UP),
    # A WebSocket is never retried.
    (RESET, True, True, False, True, 1, 2, ALL, GIVE_UP),
]


@pytest.mark.parametrize("failure, safe, replayable, started, tunnel, tried, attempts, on, answer",
                         MONEY_RULES)
def test_the_money_rules(failure: str, safe: bool, replayable: bool, started: bool, tunnel: bool,
                         tried: int, attempts: int, on: frozenset[str], answer: int) -> None:
    assert may_retry(failure, safe, replayable, started, tunnel, tried, attempts, on) == answer
