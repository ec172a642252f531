"""Small validators shared by the built-in plugins' `parse_settings`.

Each reports `(dotted.path, message)` into the config loader's error list, in the same words as
the rest of the config ("unknown key", "required key is missing", "expected ..., got ..."), and
returns None for a value it refused so the caller can go on and report every other problem.
"""

from __future__ import annotations

import ipaddress
from typing import Any

# One wording for a refused value across the whole config, the plugins' settings included.
from balancer.config_file import show_value as show
from balancer.grammar import FIELD_VALUE, TOKEN

Errors = list[tuple[str, str]]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PROTECTED_WHY = "framing and hop-by-hop headers, Host, and the headers the balancer sets itself are protected"


def section(raw: object, path: str, errors: Errors, known: tuple[str, ...],
            required: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """A settings mapping with only `known` keys (each unknown one reported at its own path)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append((path, f"expected a mapping of settings, got {show(raw)}"))
        return None
    for key in raw:
        if key not in known:
            errors.append((f"{path}.{key}", "unknown key"))
    for key in required:
        if key not in raw:
            errors.append((f"{path}.{key}", "required key is missing"))
    return raw


def header_name(raw: object, path: str, errors: Errors, protected: frozenset[str] = frozenset()) -> str | None:
    if not isinstance(raw, str) or not TOKEN.fullmatch(raw):
        errors.append((path, f"expected a header name, got {show(raw)}"))
        return None
    if raw.lower() in protected:
        errors.append((path, f"{raw} cannot be edited by a plugin ({PROTECTED_WHY})"))
        return None
    return raw


def header_value(raw: object, path: str, errors: Errors) -> str | None:
    """A header value: a string (numbers are taken as written), printable ASCII and tabs only."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not FIELD_VALUE.fullmatch(raw):
        errors.append((path, f"expected a header value (printable ASCII), got {show(raw)}"))
        return None
    return raw


def string_list(raw: object, path: str, errors: Errors) -> list[object] | None:
    if not isinstance(raw, list):
        errors.append((path, f"expected a list, got {show(raw)}"))
        return None
    return raw


def network(raw: object, path: str, errors: Errors) -> IPNetwork | None:
    """An IP address or CIDR network; host bits set are refused (a typo widens an ACL)."""
    if not isinstance(raw, str):
        errors.append((path, f"expected an IP address or CIDR network, got {show(raw)}"))
        return None
    try:
        return ipaddress.ip_network(raw.strip())
    except ValueError:
        pass
    try:
        wider = ipaddress.ip_network(raw.strip(), strict=False)
    except ValueError:
        errors.append((path, f"expected an IP address or CIDR network, got {show(raw)}"))
        return None
    errors.append((path, f"{raw} has host bits set; did you mean {wider}?"))
    return None


def positive_int(raw: object, path: str, errors: Errors) -> int | None:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        errors.append((path, f"expected a whole number of at least 1, got {show(raw)}"))
        return None
    return raw
