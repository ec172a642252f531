"""`join_bytes` and `field_lines`, as the pure build runs them: a head's bytes.

The exchange builds a backend's request head, and the player's connection an answer's head, as
a list of bytes pieces joined once. Compiled, `join_bytes` is the C function
balancer/http/headers.pxd declares (one size pass, one copy a piece); pure, it is `b"".join`
itself (no wrapper call per head), which those modules take by `import *`: a name Cython sees
as imported would clash with the C one, a star import it leaves alone (as
balancer/log_bytes.py).
"""

from __future__ import annotations

from typing import Callable

__all__ = ["join_bytes", "field_lines"]

join_bytes: Callable[[list[bytes]], bytes] = b"".join


def field_lines(fields: list[tuple[bytes, bytes, bytes]], drop: frozenset[bytes], lengths: int,
                keep_upgrade: bool) -> bytes:
    """The fields as a head's `name: value` lines, those whose lower-case name is in `drop`
    left out (but Upgrade when `keep_upgrade`: a 101's). `lengths` (headers.length_bits of
    `drop`, or 0) is the compiled build's shortcut, which gives the same answer."""
    return b"".join([b"%b: %b\r\n" % (name, value) for lname, name, value in fields
                     if lname not in drop or (keep_upgrade and lname == b"upgrade")])
