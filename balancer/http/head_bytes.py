"""`join_bytes`, as the pure build runs it: the pieces of a head joined into its bytes.

The exchange builds a backend's request head, and the player's connection an answer's head, as
a list of bytes pieces joined once. Compiled, `join_bytes` is the C function
balancer/http/headers.pxd declares (one size pass, one copy a piece); pure, it is `b"".join`
itself (no wrapper call per head), which those modules take by `import *`: a name Cython sees
as imported would clash with the C one, a star import it leaves alone (as
balancer/log_bytes.py).
"""

from __future__ import annotations

from typing import Callable

__all__ = ["join_bytes"]

join_bytes: Callable[[list[bytes]], bytes] = b"".join
