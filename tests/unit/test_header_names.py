"""Lower-case header names, remembered per connection (balancer/http/headers.py)."""

from __future__ import annotations

import tracemalloc

from balancer.http.headers import HeaderNames, lower_name


def names_of(memo: HeaderNames, message: list[bytes]) -> list[bytes]:
    memo.restart()
    return [memo.lower(name) for name in message]


def test_every_message_gets_its_own_names_lower_cased() -> None:
    memo = HeaderNames()
    messages = [
        [b"Host", b"User-Agent", b"Accept"],
        [b"Host", b"User-Agent", b"Accept"],  # the same again
        [b"Host", b"Cookie", b"Accept", b"X-Request-Id"],  # one changed, one more
        [b"HOST"],  # shorter, and a different spelling at a known position
        [b"Host", b"User-Agent", b"Accept"],
    ]
    for message in messages:
        assert names_of(memo, message) == [name.lower() for name in message]


def test_a_repeated_name_is_the_shared_lower_case_object() -> None:
    memo = HeaderNames()
    first = names_of(memo, [b"Content-Type"])[0]
    again = names_of(memo, [bytes(bytearray(b"Content-Type"))])[0]  # equal, not the same object
    assert again is first is lower_name(b"Content-Type")


def test_a_long_message_is_lowered_past_what_is_remembered() -> None:
    memo = HeaderNames()
    message = [b"X-Field-%d" % i for i in range(200)]
    for _ in range(2):
        assert names_of(memo, message) == [name.lower() for name in message]


def test_a_connection_never_holds_long_names() -> None:
    # A client could send a long name at each position in turn, one request after another:
    # what the memo keeps must stay small however its slots were filled before.
    memo = HeaderNames()
    names_of(memo, [b"X-Short-%d" % i for i in range(32)])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for position in range(31, -1, -1):
            message = [b"X-Short-%d" % i for i in range(position)] + [b"X-" + b"L" * 5000]
            assert names_of(memo, message) == [name.lower() for name in message]
            del message
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 20_000  # 32 long names (and their lower-case copies) would be over 300 KB
