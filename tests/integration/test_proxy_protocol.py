"""PROXY protocol v1/v2 on a listener (docs/configuration.md `proxy_protocol`; docs/architecture.md): the address it
carries is the client's for X-Forwarded-For, the geo lookup and rate limits, and only peers in
`trusted_proxies` may send it."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
import struct
from pathlib import Path

import trustme
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from balancer.http.proxy_protocol import V2_SIGNATURE
from tests.conftest import Running, pool_yaml
from tests.waiting import HANG_GUARD

PROXY_LISTENER = """listeners:
  - name: public
    address: 127.0.0.1:0
    proxy_protocol: true
"""


def v1(src: str, sport: int = 40000) -> bytes:
    family = "TCP6" if ":" in src else "TCP4"
    dst = "::1" if family == "TCP6" else "127.0.0.1"
    return f"PROXY {family} {src} {dst} {sport} 443\r\n".encode()


def v2(src: str | None, sport: int = 40000) -> bytes:
    """A v2 PROXY header for `src`; None gives a LOCAL one (the proxy's own health check)."""
    if src is None:
        return V2_SIGNATURE + b"\x20\x00\x00\x00"
    address = ipaddress.ip_address(src)
    dst = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    block = address.packed + dst.packed + struct.pack("!HH", sport, 443)
    family = 0x21 if address.version == 6 else 0x11
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(block)) + block


def get(path: str = "/", extra: str = "", close: bool = True) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: games.example.com\r\n{extra}{connection}\r\n".encode()


async def exchange(lb: Running, *pieces: bytes, pause: float = 0.0, timeout: float = 2.0) -> bytes:
    """Send `pieces` (pausing between them, so they arrive as separate reads), read to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""  # closed with our bytes unread: the kernel answers with a reset
    finally:
        writer.close()


def answers(raw: bytes) -> list[tuple[int, dict]]:
    """Status and JSON body of each response in `raw` (the fake backends answer JSON)."""
    out = []
    for part in raw.split(b"HTTP/1.1 ")[1:]:
        status = int(part[:3])
        head, _, body = part.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        out.append((status, json.loads(body[:length])))
    return out


def forwarded_for(raw: bytes) -> str:
    ((status, body),) = answers(raw)
    assert status == 200, body
    return {k.lower(): v for k, v in body["headers"].items()}["x-forwarded-for"]


async def proxied(start_balancer, bs, trusted: str = "[127.0.0.0/8]", extra: str = "",
                  plugins: str = "[]") -> Running:
    return await start_balancer(f"""
        trusted_proxies: {trusted}
        limits: {{header_timeout: 300ms}}
        {extra}
        routes:
          - {{name: all, pool: web, plugins: {plugins}}}
        pools:
          web:
            backends: {pool_yaml(bs)}
        """, listeners=PROXY_LISTENER)


async def test_v1_and_v2_addresses_become_the_client_address(start_balancer, backends):
    bs = await backends(1)
    lb = await proxied(start_balancer, bs)
    assert forwarded_for(await exchange(lb, v1("203.0.113.7") + get())) == "203.0.113.7"
    assert forwarded_for(await exchange(lb, v2("198.51.100.9") + get())) == "198.51.100.9"
    assert forwarded_for(await exchange(lb, v2("2001:db8::7") + get())) == "2001:db8::7"
    assert forwarded_for(await exchange(lb, v1("2001:db8::8") + get())) == "2001:db8::8"


async def test_the_proxied_client_is_not_a_trusted_peer(start_balancer, backends):
    """The client behind the proxy wrote its own X-Forwarded-For: it is replaced, not extended."""
    bs = await backends(1)
    lb = await proxied(start_balancer, bs)
    raw = await exchange(lb, v1("203.0.113.7") + get(extra="X-Forwarded-For: 6.6.6.6\r\n"))
    assert forwarded_for(raw) == "203.0.113.7"


async def test_local_command_keeps_the_proxys_own_address(start_balancer, backends):
    bs = await backends(1)
    lb = await proxied(start_balancer, bs)
    assert forwarded_for(await exchange(lb, v2(None) + get())) == "127.0.0.1"
    assert forwarded_for(await exchange(lb, b"PROXY UNKNOWN\r\n" + get())) == "127.0.0.1"


async def test_headers_split_across_reads_and_keep_alive_requests(start_balancer, backends):
    bs = await backends(1)
    lb = await proxied(start_balancer, bs)
    header = v2("203.0.113.50")
    raw = await exchange(lb, header[:5], header[5:14], header[14:20], header[20:] + get(close=False)[:10],
                         get(close=False)[10:], get("/two"), pause=0.02)
    got = answers(raw)
    assert [status for status, _ in got] == [200, 200]
    assert [{k.lower(): v for k, v in body["headers"].items()}["x-forwarded-for"] for _, body in got] == [
        "203.0.113.50", "203.0.113.50"]
    line = v1("203.0.113.51")
    raw = await exchange(lb, line[:7], line[7:30], line[30:] + get(), pause=0.02)
    assert forwarded_for(raw) == "203.0.113.51"


async def test_a_trusted_peer_without_a_valid_header_is_closed(start_balancer, backends):
    bs = await backends(1)
    lb = await proxied(start_balancer, bs)
    assert await exchange(lb, get()) == b""  # plain HTTP where a PROXY header must come
    assert await exchange(lb, b"PROXY TCP4 203.0.113.7 10.0.0.1 1\r\n" + get()) == b""
    assert await exchange(lb, V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12) + get()) == b""  # UDP
    assert bs[0].count() == 0


async def test_a_header_that_never_ends_times_out(start_balancer, backends):
    bs = await backends(1)
    lb = await proxied(start_balancer, bs)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await exchange(lb, b"PROXY TCP4 203.0.1", timeout=3.0) == b""
    assert loop.time() - started < 2.0  # header_timeout (300ms), not the client's patience
    # The listener still serves everyone else.
    assert forwarded_for(await exchange(lb, v1("203.0.113.7") + get())) == "203.0.113.7"


async def test_an_untrusted_peer_cannot_set_its_address(start_balancer, backends):
    bs = await backends(1)
    lb = await proxied(start_balancer, bs, trusted="[10.0.0.0/8]")
    raw = await exchange(lb, v1("203.0.113.7") + get())
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert (await exchange(lb, v2("203.0.113.7") + get())).startswith(b"HTTP/1.1 400 ")
    assert bs[0].count() == 0
    # Without a header it is served as itself.
    assert forwarded_for(await exchange(lb, get())) == "127.0.0.1"


async def test_rate_limit_and_geo_follow_the_proxied_address(start_balancer, backends, tmp_path: Path):
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-Country")
    writer.insert_network(IPSet(["203.0.113.0/24"]), {"country": {"iso_code": "FR"}})
    writer.insert_network(IPSet(["198.51.100.0/24"]), {"country": {"iso_code": "DE"}})
    writer.insert_network(IPSet(["127.0.0.0/8"]), {"country": {"iso_code": "DE"}})
    database = tmp_path / "countries.mmdb"
    writer.to_db_file(str(database))
    bs = await backends(1)
    lb = await proxied(start_balancer, bs, extra=f"""
        geo:
          database: {database}
          regions: {{eu-west: [DE, FR]}}
          default_region: eu-west
          blocked_countries: [FR]
        """, plugins="[{rate_limit: {rate: 1/m, burst: 1}}]")
    assert (await exchange(lb, v1("203.0.113.7") + get())).startswith(b"HTTP/1.1 451 ")  # FR, blocked
    assert (await exchange(lb, v1("198.51.100.1") + get())).startswith(b"HTTP/1.1 200 ")  # DE
    assert (await exchange(lb, v1("198.51.100.1") + get())).startswith(b"HTTP/1.1 429 ")  # its bucket is empty
    assert (await exchange(lb, v1("198.51.100.2") + get())).startswith(b"HTTP/1.1 200 ")  # another player's is not


async def test_proxy_header_before_the_tls_handshake(start_balancer, backends, tmp_path: Path):
    ca = trustme.CA()
    cert = ca.issue_cert("games.example.com")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "chain.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    bs = await backends(1)
    lb = await start_balancer(f"""
        trusted_proxies: [127.0.0.0/8]
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            backends: {pool_yaml(bs)}
        """, listeners=f"""listeners:
  - name: public
    address: 127.0.0.1:0
    proxy_protocol: true
    tls: {{certificate: {tmp_path / 'chain.pem'}, key: {tmp_path / 'key.pem'}}}
""")
    client = ssl.create_default_context()
    ca.configure_trust(client)
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    writer.write(v2("203.0.113.99"))
    await writer.drain()
    await writer.start_tls(client, server_hostname="games.example.com")
    writer.write(get())
    raw = await asyncio.wait_for(reader.read(), HANG_GUARD)
    writer.close()
    ((status, body),) = answers(raw)
    headers = {k.lower(): v for k, v in body["headers"].items()}
    assert status == 200
    assert (headers["x-forwarded-for"], headers["x-forwarded-proto"]) == ("203.0.113.99", "https")
