"""TLS termination on listeners (docs/configuration.md `listeners.tls`): certificates from trustme, an
SNI map, TLS 1.2 and up only, and what TLS changes for the backend (X-Forwarded-Proto) and
the player (Secure sticky cookies)."""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
import warnings
from pathlib import Path

import aiohttp
import pytest
import trustme

from balancer.config import ConfigError
from balancer.config_file import load_config
from tests.conftest import pool_yaml
from tests.waiting import HANG_GUARD

NAMES = ("casino.example.com", "games.example.com", "eu.live.example.com")


@pytest.fixture
def pki(tmp_path: Path) -> tuple[trustme.CA, dict[str, tuple[Path, Path]]]:
    """A CA and, per name, a (certificate, key) pair on disk."""
    ca = trustme.CA()
    files = {}
    for name in NAMES:
        cert = ca.issue_cert(name)
        chain, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key))
        files[name] = (chain, key)
    return ca, files


def tls_listeners(files: dict[str, tuple[Path, Path]]) -> str:
    (default_cert, default_key), (games_cert, games_key), (live_cert, live_key) = (files[n] for n in NAMES)
    return f"""listeners:
  - name: public
    address: 127.0.0.1:0
    tls:
      certificate: {default_cert}
      key: {default_key}
      sni:
        games.example.com: {{certificate: {games_cert}, key: {games_key}}}
        "*.live.example.com": {{certificate: {live_cert}, key: {live_key}}}
  - name: plain
    address: 127.0.0.1:0
"""


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def start(start_balancer, backends, pki, sticky: bool = False):
    ca, files = pki
    bs = await backends(2)
    sticky_yaml = "sticky: {cookie: LB_GAME, ttl: 1h}" if sticky else ""
    lb = await start_balancer(f"""
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            {sticky_yaml}
            backends: {pool_yaml(bs)}
        """, listeners=tls_listeners(files))
    return lb, bs, ca


async def served_name(port: int, ca: trustme.CA, server_name: str | None) -> str:
    """The DNS name in the certificate the balancer presents for `server_name`."""
    context = client_context(ca)
    context.check_hostname = False
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                   server_hostname=server_name or "")
    cert = writer.get_extra_info("peercert")
    writer.close()
    return next(value for kind, value in cert["subjectAltName"] if kind == "DNS")


async def test_https_request_through_a_tls_listener(start_balancer, backends, pki):
    lb, bs, ca = await start(start_balancer, backends, pki)
    port = lb.port("public")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"https://127.0.0.1:{port}/lobby", ssl=client_context(ca),
                            server_hostname="casino.example.com") as resp:
            body = await resp.json()
            assert resp.status == 200
        assert body["path"] == "/lobby"
        assert body["headers"]["X-Forwarded-Proto"] == "https"
        async with http.get(f"http://127.0.0.1:{lb.port('plain')}/lobby") as resp:
            assert (await resp.json())["headers"]["X-Forwarded-Proto"] == "http"
        # Keep-alive over TLS: several requests on one connection.
        connector = aiohttp.TCPConnector(limit=1, ssl=client_context(ca))
        async with aiohttp.ClientSession(connector=connector) as one:
            for _ in range(3):
                async with one.get(f"https://127.0.0.1:{port}/", server_hostname="casino.example.com") as resp:
                    assert resp.status == 200


async def test_sni_picks_the_certificate(start_balancer, backends, pki):
    lb, _, ca = await start(start_balancer, backends, pki)
    port = lb.port("public")
    assert await served_name(port, ca, "games.example.com") == "games.example.com"
    assert await served_name(port, ca, "GAMES.example.com") == "games.example.com"
    assert await served_name(port, ca, "eu.live.example.com") == "eu.live.example.com"  # wildcard entry
    assert await served_name(port, ca, "casino.example.com") == "casino.example.com"
    assert await served_name(port, ca, "other.example.org") == "casino.example.com"  # the default pair
    assert await served_name(port, ca, "live.example.com") == "casino.example.com"  # *. needs a label
    assert await served_name(port, ca, None) == "casino.example.com"  # no SNI at all


def client_hello(version: int) -> bytes:
    """A minimal ClientHello offering at most `version` (0x0302 = TLS 1.1, 0x0303 = TLS 1.2),
    without the supported_versions extension, so that version is the client's maximum."""
    # ECDHE with ECDSA (trustme's default keys) and with RSA, in TLS 1.2 and pre-1.2 forms.
    ciphers = [0xC02B, 0xC02C, 0xC009, 0xC00A, 0xC02F, 0xC030, 0xC013, 0xC014, 0x002F]
    extensions = (
        struct.pack("!HHH", 0x000A, 4, 2) + struct.pack("!H", 0x0017)  # supported_groups: P-256
        + struct.pack("!HHB", 0x000B, 2, 1) + b"\x00"  # ec_point_formats: uncompressed
        + struct.pack("!HHH", 0x000D, 10, 8) + struct.pack("!HHHH", 0x0403, 0x0401, 0x0203, 0x0201)  # sig algs
        + struct.pack("!HH", 0xFF01, 1) + b"\x00"  # renegotiation_info
    )
    body = (struct.pack("!H", version) + os.urandom(32) + b"\x00"
            + struct.pack("!H", 2 * len(ciphers)) + b"".join(struct.pack("!H", c) for c in ciphers)
            + b"\x01\x00" + struct.pack("!H", len(extensions)) + extensions)
    handshake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


async def first_record(port: int, hello: bytes) -> bytes:
    """The first bytes the server answers `hello` with (b"" when it just closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hello)
    try:
        return await asyncio.wait_for(reader.read(7), HANG_GUARD)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def test_tls_1_1_is_refused_and_1_2_is_served(start_balancer, backends, pki, tmp_path):
    lb, _, ca = await start(start_balancer, backends, pki)
    port = lb.port("public")
    # Control: a server that still allows TLS 1.0/1.1 answers this TLS 1.1 hello with a
    # ServerHello, so the balancer's refusal below is about the version and nothing else.
    chain, key = pki[1]["casino.example.com"]
    legacy = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated is the point here
        legacy.minimum_version = ssl.TLSVersion.TLSv1
    legacy.set_ciphers("DEFAULT:@SECLEVEL=0")
    legacy.load_cert_chain(chain, key)
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=legacy)
    try:
        control = await first_record(server.sockets[0].getsockname()[1], client_hello(0x0302))
    finally:
        server.close()
    if control[:1] != b"\x16":
        pytest.skip("this OpenSSL cannot serve TLS 1.1 at all; the refusal would prove nothing")
    assert control[:3] == b"\x16\x03\x02"  # a TLS 1.1 handshake record
    # The balancer: no ServerHello, the connection is closed. (OpenSSL writes a
    # protocol_version alert, but the event loop's TLS layer closes without flushing it.)
    record = await first_record(port, client_hello(0x0302))
    assert record == b"" or record[:1] == b"\x15"
    # The same hello offering TLS 1.2 is served.
    assert (await first_record(port, client_hello(0x0303)))[:3] == b"\x16\x03\x03"
    # And a real client capped at TLS 1.1 cannot connect.
    old = client_context(ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.open_connection("127.0.0.1", port, ssl=old, server_hostname="casino.example.com")


async def test_sticky_cookie_is_secure_on_tls_listeners_only(start_balancer, backends, pki):
    lb, _, ca = await start(start_balancer, backends, pki, sticky=True)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"https://127.0.0.1:{lb.port('public')}/", ssl=client_context(ca),
                            server_hostname="casino.example.com") as resp:
            (cookie,) = resp.headers.getall("Set-Cookie")
        async with http.get(f"http://127.0.0.1:{lb.port('plain')}/") as resp:
            (plain_cookie,) = resp.headers.getall("Set-Cookie")
    attributes = [part.strip() for part in cookie.split(";")]
    assert attributes[0].startswith("LB_GAME=")
    assert "Secure" in attributes and "HttpOnly" in attributes
    assert "Secure" not in [part.strip() for part in plain_cookie.split(";")]


async def test_plain_http_on_a_tls_listener_is_closed(start_balancer, backends, pki):
    lb, bs, _ = await start(start_balancer, backends, pki)
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port("public"))
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    try:
        data = await asyncio.wait_for(reader.read(), HANG_GUARD)
    except ConnectionResetError:
        data = b""
    writer.close()
    assert not data.startswith(b"HTTP/")
    assert sum(b.count() for b in bs) == 0


def test_sni_config_errors_carry_key_paths(pki, tmp_path):
    _, files = pki
    cert, key = files["casino.example.com"]
    games_cert, _ = files["games.example.com"]
    path = tmp_path / "tls.yaml"
    path.write_text(f"""
listeners:
  - name: public
    address: 127.0.0.1:0
    tls:
      certificate: {cert}
      key: {key}
      sni:
        games.example.com: {{certificate: {games_cert}, key: {key}}}
        live.example.com: {{certificate: {tmp_path / 'missing.pem'}, key: {key}}}
routes: [{{name: r, pool: p}}]
pools: {{p: {{backends: [{{id: a, address: "127.0.0.1:1"}}]}}}}
""")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    errors = dict(caught.value.errors)
    assert errors["listeners.0.tls.sni.games.example.com"].startswith("cannot use this certificate and key")
    assert errors["listeners.0.tls.sni.live.example.com.certificate"].startswith("no such file")


async def tls12_connection(port: int, ca: trustme.CA, ciphers: str) -> ssl.SSLObject:
    context = client_context(ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                   server_hostname="casino.example.com")
    ssl_object = writer.get_extra_info("ssl_object")
    writer.close()
    return ssl_object


async def test_tls_1_2_only_with_aead_and_forward_secrecy_and_no_compression(start_balancer, backends, pki):
    lb, _, ca = await start(start_balancer, backends, pki)
    port = lb.port("public")
    served = await tls12_connection(port, ca, "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert served.version() == "TLSv1.2" and served.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert served.compression() is None
    # CBC suites (Lucky13 and friends), even with ECDHE, are not offered.
    for cbc in ("ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA"):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await tls12_connection(port, ca, cbc)


async def test_renegotiation_is_refused(start_balancer, backends, pki, tmp_path):
    """`openssl s_client` asks for a renegotiation (the `R` command) on a TLS 1.2 connection."""
    lb, _, ca = await start(start_balancer, backends, pki)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{lb.port('public')}", "-tls1_2",
        "-CAfile", str(ca_file), "-servername", "casino.example.com",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert client.stdin is not None and client.stdout is not None
    output = b""
    async with asyncio.timeout(20):  # hang guard
        while b"Verify return code: 0" not in output:  # handshake done, certificate verified
            output += await client.stdout.read(4096) or b"EOF"
            assert not output.endswith(b"EOF"), output
        client.stdin.write(b"R\n")
        await client.stdin.drain()
        output += await client.stdout.read()
    await client.wait()
    assert b"RENEGOTIATING" in output
    assert b"no renegotiation" in output
