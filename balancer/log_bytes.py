"""`put` and `put2`, as the pure build runs them: a line's pieces copied into a batch buffer.

balancer/access_log.py builds each line straight into its batch, a bytearray, piece by piece.
Compiled, they are the C functions its .pxd declares (a memcpy: no string per line, no encode,
no join of the batch later); pure, they are these, which access_log.py takes by `import *`:
a name Cython sees as imported would clash with the C one, a star import it leaves alone.
"""

from __future__ import annotations

__all__ = ["put", "put2"]


def put(buf: bytearray, at: int, piece: bytes | str) -> int:
    """Write `piece` (bytes, or an ASCII str) into `buf` at `at`, growing it if needed; return
    where it ends."""
    data = piece.encode() if isinstance(piece, str) else piece
    end = at + len(data)
    buf[at:end] = data
    return end


def put2(buf: bytearray, at: int, before: bytes, value: bytes | str) -> int:
    """`put` of `before` (what ends the previous field and names this one), then of `value`."""
    return put(buf, put(buf, at, before), value)
