"""The life of an exchange (one request and its answer), as phases with allowed moves, in the
manner of h11's state machine: a move the table does not allow is a bug, and fails loudly.

    ROUTING ──▶ FORWARDING ──▶ RESPONDING ──▶ DONE
        │          ▲    │          │            ▲
        │          └────┘ retry    └─▶ TUNNEL ──┘   (a WebSocket, after the 101)
        └────────────────────────▶ RESPONDING       (the balancer's own answer: 404, 451, 503)
    ROUTING or FORWARDING ──▶ DONE                 (the player left before any answer: 499)

ROUTING: the head is read; route, plugins, choosing a backend. FORWARDING: a backend has the
request (or its connection is opening); a retry stays here. RESPONDING: the answer's head went
to the player, whether the backend's or the balancer's own. Nothing here knows a connection:
an HTTP/1.1 exchange and an HTTP/2 stream live the same phases.
"""

from __future__ import annotations

ROUTING, FORWARDING, RESPONDING, TUNNEL, DONE = range(5)
NAMES = ("routing", "forwarding", "responding", "tunnel", "done")

TRANSITIONS: dict[int, tuple[int, ...]] = {
    ROUTING: (FORWARDING, RESPONDING, DONE),
    FORWARDING: (FORWARDING, RESPONDING, DONE),
    RESPONDING: (TUNNEL, DONE),
    TUNNEL: (DONE,),
    DONE: (),
}

# The table as one bit mask (bit old * 5 + new), so the compiled exchange checks a move with a
# shift and an and.
MOVES = sum(1 << (old * 5 + new) for old, targets in TRANSITIONS.items() for new in targets)


class IllegalTransition(RuntimeError):
    """An exchange was asked to move where its life does not go: a bug in the caller."""

    def __init__(self, old: int, new: int) -> None:
        super().__init__(f"an exchange cannot go from {NAMES[old]} to {NAMES[new]}")
        self.old = old
        self.new = new


def allowed(old: int, new: int) -> bool:
    return (MOVES >> (old * 5 + new)) & 1 == 1
