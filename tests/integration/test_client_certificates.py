"""Client certificates on a listener (`listeners.N.tls.client_ca`, `client_certificate`):
game providers authenticated by certificate, the verified identity passed to backends in
X-Client-Cert-Subject / X-Client-Cert-Fingerprint (which players can never forge), and routes
that only a given certificate reaches (`match.client_certificate`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme

from balancer.config import ConfigError
from balancer.config_file import load_config
from tests.conftest import pool_yaml
from tests.fakes.h2client import H2Client
from tests.pki import Pki

SERVER_NAME = "wallet.casino.example"
SUBJECT = "CN=acme-slots,OU=Slots,O=Game Providers"  # RFC 4514: most specific first


@pytest.fixture
def pki(new_ca) -> Pki:
    """The CA of the listener's own certificate."""
    return new_ca()


@pytest.fixture
def providers(new_ca) -> Pki:
    """The CA that signs game providers' client certificates."""
    return new_ca()


def listeners(pki: Pki, providers: Pki, mode: str) -> str:
    cert, key = pki.pair(SERVER_NAME)
    return f"""listeners:
  - name: providers
    address: 127.0.0.1:0
    tls: {{certificate: {cert}, key: {key}, client_ca: {providers.ca_file}, client_certificate: {mode}}}
  - name: plain
    address: 127.0.0.1:0
"""


def provider_cert(providers: Pki, name: str) -> trustme.LeafCert:
    return providers.ca.issue_cert(f"{name}.example", common_name=name,
                                   organization_name="Game Providers", organization_unit_name="Slots")


def der_sha256(cert: trustme.LeafCert) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())).hexdigest()


async def get(port: int, context: ssl.SSLContext, path: str = "/", headers: dict | None = None):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"https://127.0.0.1:{port}{path}", ssl=context,
                            server_hostname=SERVER_NAME, headers=headers or {}) as resp:
            return resp.status, await resp.json()


async def test_required_client_certificate_accepted_and_passed_to_the_backend(
        start_balancer, backends, pki, providers):
    (wallet,) = await backends(1)
    lb = await start_balancer(f"""
        routes: [{{name: all, pool: web}}]
        pools: {{web: {{backends: {pool_yaml([wallet])}}}}}
        """, listeners=listeners(pki, providers, "required"))
    cert = provider_cert(providers, "acme-slots")
    status, body = await get(lb.port("providers"), pki.client_context(cert), headers={
        "X-Client-Cert-Subject": "CN=forged", "X-Client-Cert-Fingerprint": "00" * 32,
        "X-Forwarded-Client-Cert": "Hash=00;Subject=\"CN=forged\""})
    assert status == 200
    seen = {name.lower(): value for name, value in body["headers"].items()}
    assert seen["x-client-cert-subject"] == SUBJECT
    assert seen["x-client-cert-fingerprint"] == der_sha256(cert)
    assert "x-forwarded-client-cert" not in seen


@pytest.mark.parametrize("who", ["no certificate", "another CA"])
async def test_required_client_certificate_refused(start_balancer, backends, pki, providers, new_ca, who):
    (wallet,) = await backends(1)
    lb = await start_balancer(f"""
        routes: [{{name: all, pool: web}}]
        pools: {{web: {{backends: {pool_yaml([wallet])}}}}}
        """, listeners=listeners(pki, providers, "required"))
    cert = None if who == "no certificate" else provider_cert(new_ca(), "impostor")
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await get(lb.port("providers"), pki.client_context(cert))
    assert wallet.count() == 0


async def test_optional_client_certificate_and_header_stripping(start_balancer, backends, pki, providers):
    (web,) = await backends(1)
    lb = await start_balancer(f"""
        routes: [{{name: all, pool: web}}]
        pools: {{web: {{backends: {pool_yaml([web])}}}}}
        """, listeners=listeners(pki, providers, "optional"))
    forged = {"X-Client-Cert-Subject": "CN=wallet-provider", "x-client-cert-fingerprint": "ab" * 32}
    # No certificate: served, and no certificate header reaches the backend, forged or not.
    status, body = await get(lb.port("providers"), pki.client_context(), headers=forged)
    assert status == 200
    assert not any(name.lower().startswith("x-client-cert") for name in body["headers"])
    # The same forgery on a listener that asks for no certificate at all.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{lb.port('plain')}/", headers=forged) as resp:
            assert not any(n.lower().startswith("x-client-cert") for n in (await resp.json())["headers"])
    # With one: the verified identity.
    cert = provider_cert(providers, "acme-slots")
    status, body = await get(lb.port("providers"), pki.client_context(cert), headers=forged)
    seen = {name.lower(): value for name, value in body["headers"].items()}
    assert seen["x-client-cert-fingerprint"] == der_sha256(cert)
    assert seen["x-client-cert-subject"] == SUBJECT


async def test_routes_match_the_client_certificate(start_balancer, backends, pki, providers):
    wallet, games = await backends("wallet", "games")
    acme = provider_cert(providers, "acme-slots")
    other = provider_cert(providers, "other-games")
    lb = await start_balancer(f"""
        routes:
          - name: wallet
            match: {{path_prefix: /wallet, client_certificate: {{subject: "{SUBJECT}"}}}}
            pool: wallet
          - name: wallet-by-fingerprint
            match: {{path_prefix: /credit, client_certificate: {{fingerprint: "{der_sha256(other)}"}}}}
            pool: wallet
          - {{name: rest, match: {{path_prefix: /lobby}}, pool: games}}
        pools:
          wallet: {{backends: {pool_yaml([wallet])}}}
          games: {{backends: {pool_yaml([games])}}}
        """, listeners=listeners(pki, providers, "optional"))
    port = lb.port("providers")
    assert (await get(port, pki.client_context(acme), "/wallet/debit"))[1]["backend"] == "wallet"
    # Another provider's certificate, or none, or a forged header: no wallet route matches.
    for context, headers in ((pki.client_context(other), {}), (pki.client_context(), {}),
                             (pki.client_context(), {"X-Client-Cert-Subject": SUBJECT})):
        status, _ = await get(port, context, "/wallet/debit", headers)
        assert status == 404
    assert (await get(port, pki.client_context(other), "/credit"))[1]["backend"] == "wallet"
    status, _ = await get(port, pki.client_context(acme), "/credit")
    assert status == 404
    assert wallet.count() == 2


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "balancer.yaml"
    path.write_text(text)
    return str(path)


def test_client_certificate_config_errors_carry_key_paths(pki, providers, tmp_path):
    cert, key = pki.pair(SERVER_NAME)
    path = write_config(tmp_path, f"""
listeners:
  - name: a
    address: 127.0.0.1:0
    tls: {{certificate: {cert}, key: {key}, client_ca: {providers.ca_file}}}
  - name: b
    address: 127.0.0.1:0
    tls: {{certificate: {cert}, key: {key}, client_certificate: sometimes}}
  - name: c
    address: 127.0.0.1:0
    tls: {{certificate: {cert}, key: {key}, client_ca: {cert.with_suffix('.key')}, client_certificate: required}}
routes:
  - name: r
    match:
      headers: {{X-Client-Cert-Subject: "CN=x"}}
      client_certificate: {{fingerprint: "12:34"}}
    pool: p
  - {{name: s, match: {{client_certificate: {{}}}}, pool: p}}
pools: {{p: {{backends: [{{id: a, address: "127.0.0.1:1"}}]}}}}
""")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    errors = dict(caught.value.errors)
    assert errors["listeners.0.tls.client_certificate"].startswith("required with client_ca")
    assert errors["listeners.1.tls.client_certificate"].startswith("expected one of")
    assert errors["listeners.2.tls.client_ca"].startswith("cannot use this CA bundle")
    assert "match.client_certificate" in errors["routes.0.match.headers.x-client-cert-subject"]
    assert errors["routes.0.match.client_certificate.fingerprint"].startswith("expected a SHA-256")
    assert errors["routes.1.match.client_certificate"] == "give subject, fingerprint or both"


async def test_client_certificate_over_http2(start_balancer, backends, pki, providers):
    """A provider speaking HTTP/2 (ALPN h2) on a listener that asks for certificates: each
    stream carries the connection's verified identity to the backend, forged headers dropped."""
    (wallet,) = await backends(1)
    lb = await start_balancer(f"""
        routes: [{{name: all, pool: web}}]
        pools: {{web: {{backends: {pool_yaml([wallet])}}}}}
        """, listeners=listeners(pki, providers, "required"))
    cert = provider_cert(providers, "acme-slots")
    context = pki.client_context(cert)
    context.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port("providers"), ssl=context,
                                                   server_hostname=SERVER_NAME)
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
    client = H2Client(reader, writer)
    try:
        for _ in range(2):  # every stream of the connection, not only the first
            response = await client.request("GET", "/bet", authority=SERVER_NAME, headers=[
                ("x-client-cert-subject", "CN=forged"), ("x-client-cert-fingerprint", "00" * 32)])
            assert response.status == 200
            seen = {name.lower(): value for name, value in json.loads(response.body)["headers"].items()}
            assert seen["x-client-cert-subject"] == SUBJECT
            assert seen["x-client-cert-fingerprint"] == der_sha256(cert)
    finally:
        client.close()
