"""`uuid4_texts`, as the pure build runs it: random bytes, 16 an id, as UUIDv4 strings.

The request ids (`headers.new_request_id`) are made in batches. Compiled, `uuid4_texts` is the C
function balancer/http/headers.pxd declares (one pass, two table lookups a byte); pure, it is
this, which fills each digit place for every id of the batch at once by a strided slice.
headers.py takes it by `import *`: a name Cython sees as imported would clash with the C one,
a star import it leaves alone (as balancer/http/head_bytes.py).
"""

from __future__ import annotations

__all__ = ["uuid4_texts"]

_ID_LEN = 36  # 8-4-4-4-12 hex digits
# Where an id's 32 hex digits go among its 36 characters (the rest are dashes).
_DIGIT_PLACES = tuple(i for i in range(_ID_LEN) if i not in (8, 13, 18, 23))
# RFC 9562 §5.4: the version digit (place 14) is 4; the variant digit (place 19) is 8, 9, a or
# b, its two random bits the low two of the random hex digit it replaces.
_VARIANT_DIGITS = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")


def uuid4_texts(random: bytes) -> str:
    """len(random) // 16 UUIDv4 strings back to back, from those bytes in order."""
    n = len(random) // 16
    # Both bytearrays: a slice of one is assigned to the other without a copy in between.
    digits = bytearray(random[:16 * n].hex(), "ascii")
    ids = bytearray(b"-" * (_ID_LEN * n))
    for digit, place in enumerate(_DIGIT_PLACES):
        ids[place::_ID_LEN] = digits[digit::32]
    ids[14::_ID_LEN] = b"4" * n
    ids[19::_ID_LEN] = ids[19::_ID_LEN].translate(_VARIANT_DIGITS)
    return ids.decode("ascii")
