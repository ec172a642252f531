"""The PROXY protocol header parser (HAProxy's spec, v1 and v2), fed bytes with no sockets."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, strategies as st

from balancer.http.proxy_protocol import V2_SIGNATURE, ProxyHeader, ProxyProtocolError, parse_proxy_header

REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def v2(command: int = 1, family: int = 0x11, addresses: bytes = b"", tlvs: bytes = b"") -> bytes:
    body = addresses + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def tcp4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
            + struct.pack("!HH", sport, dport))


def tcp6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
            + struct.pack("!HH", sport, dport))


# -- v1 ------------------------------------------------------------------------------------------


def test_v1_tcp4_and_what_follows_is_left_alone():
    line = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n"
    header = parse_proxy_header(line + REQUEST)
    assert header == ProxyHeader(len(line), 1, ("203.0.113.7", 56324), ("10.0.0.1", 443))


def test_v1_tcp6():
    line = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n"
    assert parse_proxy_header(line) == ProxyHeader(len(line), 1, ("2001:db8::7", 65535), ("2001:db8::1", 0))


def test_v1_unknown_carries_no_address():
    assert parse_proxy_header(b"PROXY UNKNOWN\r\n") == ProxyHeader(15, 1)
    line = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"
    assert parse_proxy_header(line + REQUEST) == ProxyHeader(len(line), 1)


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 203.0.113.7 10.0.0.1 56324\r\n",  # a port missing
    b"PROXY TCP4 203.0.113.7  10.0.0.1 1 2\r\n",  # two spaces
    b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",  # IPv6 in TCP4
    b"PROXY TCP6 203.0.113.7 2001:db8::1 1 2\r\n",  # IPv4 in TCP6
    b"PROXY TCP4 203.0.113.007 10.0.0.1 1 2\r\n",  # leading zeros in an address
    b"PROXY TCP4 203.0.113.7 10.0.0.1 01 2\r\n",  # leading zero in a port
    b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 2\r\n",
    b"PROXY TCP4 203.0.113.7 10.0.0.1 -1 2\r\n",
    b"PROXY UDP4 203.0.113.7 10.0.0.1 1 2\r\n",
    b"PROXY tcp4 203.0.113.7 10.0.0.1 1 2\r\n",
    b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2\n",  # bare LF
    b"PROXY TCP4 203.0.113.7\r10.0.0.1 1 2\r\n",  # bare CR
    b"PROXY TCP4 203.0.113.\xff 10.0.0.1 1 2\r\n",
    b"PROXY TCP4 " + b"1" * 100,  # no CRLF within 107 bytes
    b"PROXX",
    b"GET / HTTP/1.1\r\n",
    b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
])
def test_v1_refuses_what_is_not_a_header(line):
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(line)


def test_v1_partial_headers_ask_for_more():
    line = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n"
    for end in range(len(line)):
        assert parse_proxy_header(line[:end]) is None, line[:end]


# -- v2 ------------------------------------------------------------------------------------------


def test_v2_tcp4_with_tlvs_skipped():
    tlvs = b"\x02\x00\x0bexample.com" + b"\x04\x00\x00"  # authority, NOOP
    data = v2(addresses=tcp4("203.0.113.7", "10.0.0.1", 56324, 443), tlvs=tlvs)
    assert parse_proxy_header(data + REQUEST) == ProxyHeader(len(data), 2, ("203.0.113.7", 56324), ("10.0.0.1", 443))


def test_v2_tcp6():
    data = v2(family=0x21, addresses=tcp6("2001:db8::7", "2001:db8::1", 1, 2))
    assert parse_proxy_header(data) == ProxyHeader(len(data), 2, ("2001:db8::7", 1), ("2001:db8::1", 2))


def test_v2_local_ignores_any_address_block():
    data = v2(command=0, family=0x11, addresses=tcp4("1.2.3.4", "5.6.7.8", 1, 2))
    assert parse_proxy_header(data + REQUEST) == ProxyHeader(len(data), 2)
    assert parse_proxy_header(v2(command=0, family=0x00)) == ProxyHeader(16, 2)


def test_v2_unspec_and_unix_keep_the_connections_own_address():
    assert parse_proxy_header(v2(family=0x00)) == ProxyHeader(16, 2)
    unix = v2(family=0x31, addresses=b"\x00" * 216)
    assert parse_proxy_header(unix) == ProxyHeader(len(unix), 2)


@pytest.mark.parametrize("data", [
    V2_SIGNATURE + b"\x11\x11\x00\x00",  # version 1 in a v2 header
    V2_SIGNATURE + b"\x22\x11\x00\x00",  # command 2
    v2(family=0x12, addresses=tcp4("1.2.3.4", "5.6.7.8", 1, 2)),  # UDP
    v2(family=0x11, addresses=b"\x01\x02\x03\x04"),  # address block too short for TCP4
    v2(family=0x21, addresses=tcp4("1.2.3.4", "5.6.7.8", 1, 2)),  # too short for TCP6
    v2(family=0x41),  # unknown family
    b"\r\n\r\n\x00\r\nQUIT\r",  # signature spoiled
    b"\r\n\r\nGET",
])
def test_v2_refuses_what_is_not_a_header(data):
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(data)


def test_v2_partial_headers_ask_for_more():
    data = v2(addresses=tcp4("203.0.113.7", "10.0.0.1", 56324, 443), tlvs=b"\x04\x00\x03abc")
    for end in range(len(data)):
        assert parse_proxy_header(data[:end]) is None


def test_empty_input_asks_for_more():
    assert parse_proxy_header(b"") is None


@given(st.binary(max_size=300))
def test_any_bytes_give_none_a_header_or_a_protocol_error(data):
    try:
        header = parse_proxy_header(data)
    except ProxyProtocolError:
        return
    if header is not None:
        assert 0 < header.length <= len(data)
        # What was parsed is exactly the header: parsing its own bytes gives the same result.
        assert parse_proxy_header(data[:header.length]) == header


@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(0, 65535), st.integers(0, 65535),
       st.sampled_from(["v1", "v2"]), st.integers(1, 40))
def test_round_trip_split_anywhere(src, dst, sport, dport, version, cut):
    if version == "v1":
        data = f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode()
    else:
        data = v2(addresses=tcp4(str(src), str(dst), sport, dport))
    cut = min(cut, len(data) - 1)
    assert parse_proxy_header(data[:cut]) is None
    assert parse_proxy_header(data + REQUEST) == ProxyHeader(len(data), int(version[1]), (str(src), sport),
                                                            (str(dst), dport))
