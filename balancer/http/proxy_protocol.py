"""The PROXY protocol header (HAProxy's spec, versions 1 and 2), sans I/O: bytes in, a result out.

An L4 balancer in front (HAProxy, AWS NLB, ...) opens the connection itself, so the balancer's
TCP peer is that proxy; the PROXY header it sends first says who the client really is. Only
peers in `trusted_proxies` may send one: believing it from anyone would let any client choose
its own address (and so its rate-limit bucket, its geo lookup and its X-Forwarded-For).

`parse_proxy_header(data)` looks at the bytes received so far and answers:
- None: not complete yet, read more (all of `data` belongs to the header, so it is safe to
  consume; nothing past the header is ever needed to decide);
- a `ProxyHeader` whose `length` says how many bytes it took (the rest is the client's stream);
- or raises `ProxyProtocolError` as soon as the bytes cannot be a valid header.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107  # spec §2.1: the longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version/command, family/transport, length

# v2 address families (high nibble) and transports (low nibble) of byte 14.
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0, 1, 2, 3
_STREAM = 1
_ADDRESS_BYTES = {_AF_INET: 12, _AF_INET6: 36}


class ProxyProtocolError(ValueError):
    """The bytes are not a PROXY header we accept; the connection must be closed."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    length: int  # bytes the header took
    version: int  # 1 or 2
    # The client and the address it connected to, as the proxy saw them; None when the header
    # carries no address (v2 LOCAL, e.g. the proxy's own health check; v1 UNKNOWN; v2 UNSPEC or
    # unix sockets): then the connection's own peer is the client.
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    if not data:
        return None
    if data[0] == V1_PREFIX[0]:
        return _parse_v1(data)
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(data)
    raise ProxyProtocolError("no PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    if not data[:len(V1_PREFIX)] == V1_PREFIX[:len(data)]:
        raise ProxyProtocolError("no PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data or b"\r" in data[:-1]:
            raise ProxyProtocolError("PROXY v1 line too long or not ended by CRLF")
        return None
    try:
        line = data[len(V1_PREFIX):end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1 line is not ASCII") from None
    parts = line.split(" ")
    length = end + 2
    if parts[0] == "UNKNOWN":
        return ProxyHeader(length, 1)  # spec: the rest of the line is to be ignored
    if len(parts) != 5 or parts[0] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("PROXY v1 line is not 'TCP4|TCP6 src dst sport dport'")
    family = ipaddress.IPv4Address if parts[0] == "TCP4" else ipaddress.IPv6Address
    try:
        source, destination = family(parts[1]), family(parts[2])
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1 addresses are not {parts[0]} addresses") from None
    return ProxyHeader(length, 1, (str(source), _v1_port(parts[3])), (str(destination), _v1_port(parts[4])))


def _v1_port(text: str) -> int:
    # Decimal 0-65535 without a sign or leading zeros (spec §2.1).
    if not (text.isascii() and text.isdigit()) or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyProtocolError(f"PROXY v1 port {text!r} is not a port")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if data[:len(V2_SIGNATURE)] != V2_SIGNATURE[:len(data)]:
        raise ProxyProtocolError("no PROXY protocol header")
    if len(data) < V2_FIXED:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyProtocolError(f"PROXY v2 header with version {version}")
    if command not in (0, 1):
        raise ProxyProtocolError(f"PROXY v2 header with unknown command {command}")
    family, transport = data[13] >> 4, data[13] & 0x0F
    length = V2_FIXED + int.from_bytes(data[14:16], "big")
    if len(data) < length:
        return None
    if command == 0:
        return ProxyHeader(length, 2)  # LOCAL: the proxy speaking for itself (health checks)
    if family in (_AF_UNSPEC, _AF_UNIX) and transport in (0, _STREAM):
        return ProxyHeader(length, 2)  # spec: no usable address; keep the connection's own
    if family not in _ADDRESS_BYTES or transport != _STREAM:
        raise ProxyProtocolError(f"PROXY v2 family/transport 0x{data[13]:02x} is not TCP")
    need = _ADDRESS_BYTES[family]
    if length - V2_FIXED < need:
        raise ProxyProtocolError("PROXY v2 address block shorter than its family needs")
    block = data[V2_FIXED:V2_FIXED + need]
    size = 4 if family == _AF_INET else 16
    make = ipaddress.IPv4Address if family == _AF_INET else ipaddress.IPv6Address
    source = str(make(block[:size]))
    destination = str(make(block[size:2 * size]))
    ports = block[2 * size:]
    # TLVs after the addresses (ALPN, authority, SSL...) are skipped: nothing here needs them.
    return ProxyHeader(length, 2, (source, int.from_bytes(ports[:2], "big")),
                       (destination, int.from_bytes(ports[2:4], "big")))
