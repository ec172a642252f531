"""Client addresses as the balancer compares them with configured networks."""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> IPAddress | None:
    """An address as a peer or a header gives it; None when it is not one.

    The zone of a link-local address (`fe80::1%eth0`) is dropped, and an IPv4-mapped IPv6
    address (how a listener bound to [::] sees an IPv4 peer) becomes IPv4, so that it matches
    IPv4 networks and IPv4 database entries.
    """
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
