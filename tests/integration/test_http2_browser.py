"""A real browser over HTTP/2: headless Chromium loads a page through the balancer's TLS
listener (ALPN h2) and opens a WebSocket, which travels as an extended CONNECT (RFC 8441) on
the same HTTP/2 connection."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from balancer.http.http2 import Http2Connection
from tests.conftest import needs_chromium, pool_yaml

pytest.importorskip("selenium")

pytestmark = [needs_chromium, pytest.mark.timeout(300)]


def spki_hash(cert_pem: bytes) -> str:
    """What --ignore-certificate-errors-spki-list takes: base64 SHA-256 of the public key."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


async def test_chromium_loads_a_page_and_opens_a_websocket_over_h2(start_balancer, backends, launch_chromium,
                                                                  tmp_path: Path):
    ca = trustme.CA()
    cert = ca.issue_cert("casino.example.com")
    chain, key = tmp_path / "cert.pem", tmp_path / "cert.key"
    leaf = cert.cert_chain_pems[0].bytes()
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    bs = await backends(1)
    lb = await start_balancer(f"""
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            backends: {pool_yaml(bs)}
        """, listeners=f"listeners:\n  - name: tls\n    address: 127.0.0.1:0\n"
                       f"    tls: {{certificate: {chain}, key: {key}}}\n")
    port = lb.port()
    chrome = await asyncio.to_thread(
        launch_chromium, "--host-resolver-rules=MAP casino.example.com 127.0.0.1",
        f"--ignore-certificate-errors-spki-list={spki_hash(leaf)}")
    await asyncio.to_thread(chrome.get, f"https://casino.example.com:{port}/lobby")
    protocol = await asyncio.to_thread(
        chrome.execute_script, "return performance.getEntriesByType('navigation')[0].nextHopProtocol;")
    assert protocol == "h2"
    assert '"path": "/lobby"' in await asyncio.to_thread(lambda: chrome.page_source)
    echoed = await asyncio.to_thread(chrome.execute_async_script, f"""
        const done = arguments[arguments.length - 1];
        const ws = new WebSocket('wss://casino.example.com:{port}/ws/table-1');
        ws.onopen = () => ws.send('bet');
        ws.onmessage = (event) => done(event.data);
        ws.onerror = () => done('error');
    """)
    assert echoed == f"{bs[0].name}:bet"
    # The WebSocket is a stream of the page's HTTP/2 connection, not a connection of its own.
    conns = lb.app.listeners["tls"].connections
    assert [c for c in conns if isinstance(c, Http2Connection) and c.tunnel is not None]
