"""The control messages between processes survive their one encoding, and only that."""

from __future__ import annotations

import pytest

from balancer.config import Address, BackendConfig
from balancer.messages import (
    Counters, Discovered, Done, Drain, Health, Refused, Reload, Reloaded, Snapshot, Split, decode,
    encode,
)

MESSAGES = [
    Health({"web": {"b1": (True, 0.0), "b2": (False, 1234.5)}}),
    Discovered("web", (BackendConfig(id="b1", address=Address("10.0.0.1", 8080), region="eu",
                                     weight=3, source="consul"),)),
    Drain("web", "b1", True),
    Drain("web", "b1", False),
    Split("games", {"stable": 90, "canary": 10}),
    Reload(),
    Snapshot(),
    Done(),
    Reloaded(("config.yaml: pools: must define at least one pool",)),
    Counters({"requests": {}}, {"web": {"retries": 2}}),
    Refused("unknown op x"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_a_message_comes_back_as_it_was_sent(message) -> None:
    line = encode(message, 7)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == (7, message)


def test_a_message_without_id_wants_no_reply() -> None:
    assert decode(encode(Reload())) == (None, Reload())


def test_an_unknown_message_is_refused_not_fatal() -> None:
    assert decode(b'{"op":"reboot","id":3}\n') == (3, Refused("unknown op reboot"))
