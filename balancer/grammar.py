"""HTTP's grammar, where the balancer checks text it did not parse from the wire: header and
cookie names in the config, headers that plugins (and their settings) add.

One definition each, so that what `balancer check` accepts is what a plugin may send.
"""

from __future__ import annotations

import re

# RFC 9110 §5.6.2: a token (header and cookie names, methods).
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: what a sender generates in a field value: visible ASCII, space and tab. obs-text
# (bytes 0x80-0xff) is only tolerated on receipt, and CR, LF, NUL would split or end the line.
FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")
