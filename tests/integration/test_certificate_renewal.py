"""Certificates renewed without a restart: a reload reads every certificate, key and CA file
again, even when the config text is unchanged, and swaps them without re-binding a listener or
closing a connection. A file that does not load leaves the old certificates in force and the
reload answers 400 with the reason. Expiry of every file is exported."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ssl

import aiohttp

from tests.conftest import Running, metric_samples, pool_yaml
from tests.fakes.backends import Backend
from tests.pki import Pki

NAME = "casino.example.com"
BACKEND_NAME = "games.internal"


def tls_listener(cert, key, extra: str = "") -> str:
    return f"""listeners:
  - name: public
    address: 127.0.0.1:0
    tls: {{certificate: {cert}, key: {key}{extra}}}
"""


def renew(pki: Pki, days: int = 30) -> str:
    """Issue a new certificate for NAME into the same files (live.pem / live.key), as a renewal
    tool does; returns its fingerprint."""
    not_after = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)
    chain, _ = pki.pair(NAME, file="live", not_after=not_after)
    return fingerprint_of_file(chain)


def fingerprint_of_file(chain) -> str:
    first = chain.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first)).hexdigest()


async def served_fingerprint(port: int, pki: Pki) -> str:
    """A new handshake: the fingerprint of the certificate the listener presents now."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=pki.client_context(),
                                                   server_hostname=NAME)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return hashlib.sha256(der).hexdigest()


async def keep_asking(port: int, pki: Pki, stop: asyncio.Event, counts: list[int], slot: int) -> None:
    """One player: one TLS connection, requests one after another on it until `stop`. Any
    failure or a closed connection raises (and fails the test)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=pki.client_context(),
                                                   server_hostname=NAME)
    try:
        while not stop.is_set():
            writer.write(b"GET /spin HTTP/1.1\r\nHost: casino.example.com\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), head
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            counts[slot] += 1
    finally:
        writer.close()


async def until(condition, what: str, limit: float = 20.0) -> None:
    async with asyncio.timeout(limit):  # a hang guard, not a performance claim
        while not condition():
            await asyncio.sleep(0.01)


async def admin_reload(lb, http: aiohttp.ClientSession) -> tuple[int, dict]:
    async with http.post(f"{lb.admin_url}/admin/reload") as resp:
        return resp.status, await resp.json()


async def renewable_balancer(start_balancer, backends, new_ca) -> tuple[Running, Pki, str, Backend]:
    """A balancer with one game backend behind a TLS listener whose certificate lives in
    live.pem / live.key, which `renew` rewrites; also returns the current fingerprint."""
    pki = new_ca()
    old = renew(pki)
    (game,) = await backends(1)
    lb = await start_balancer(f"""
        routes: [{{name: all, pool: web}}]
        pools: {{web: {{backends: {pool_yaml([game])}}}}}
        """, listeners=tls_listener(pki.folder / "live.pem", pki.folder / "live.key"))
    return lb, pki, old, game


async def test_renewal_by_reload_under_load_fails_nothing_and_closes_nothing(
        start_balancer, backends, new_ca, http):
    lb, pki, old, game = await renewable_balancer(start_balancer, backends, new_ca)
    port = lb.port()
    server = lb.app.listeners["public"]
    stop = asyncio.Event()
    counts = [0] * 6
    players = [asyncio.create_task(keep_asking(port, pki, stop, counts, i)) for i in range(6)]
    try:
        await until(lambda: min(counts) >= 5, "every player served")
        assert await served_fingerprint(port, pki) == old
        new = renew(pki, days=90)  # same paths, same config text
        status, body = await admin_reload(lb, http)
        assert (status, body) == (200, {"result": "reloaded"})
        before = list(counts)
        # New handshakes get the new certificate; the open connections carry on regardless.
        assert await served_fingerprint(port, pki) == new
        await until(lambda: all(c >= b + 20 for c, b in zip(counts, before)), "served after renewal")
    finally:
        stop.set()
        await asyncio.gather(*players)  # re-raises any failed request or closed connection
    assert lb.app.listeners["public"] is server and server.port == port  # never re-bound
    assert game.count() == sum(counts)


async def test_a_bad_file_keeps_the_old_certificate_and_the_reload_says_why(
        start_balancer, backends, new_ca, http):
    lb, pki, old, game = await renewable_balancer(start_balancer, backends, new_ca)
    port = lb.port()
    # A renewal that went wrong: the new certificate with the old key, then a truncated file.
    key = (pki.folder / "live.key").read_bytes()
    renew(pki)
    (pki.folder / "live.key").write_bytes(key)
    status, body = await admin_reload(lb, http)
    assert status == 400
    assert any("listeners.0.tls" in error and "key" in error for error in body["errors"])
    assert await served_fingerprint(port, pki) == old
    (pki.folder / "live.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n")
    status, body = await admin_reload(lb, http)
    assert status == 400 and "listeners.0.tls" in body["errors"][0]
    assert await served_fingerprint(port, pki) == old
    async with http.get(f"{lb.admin_url}/metrics") as resp:
        samples = metric_samples(await resp.text())
    assert samples[("balancer_config_reloads_total", frozenset({("result", "failure")}))] == 2
    # Fixed: the next reload takes it.
    new = renew(pki)
    assert (await admin_reload(lb, http))[0] == 200
    assert await served_fingerprint(port, pki) == new


async def test_a_reload_rereads_the_backend_ca_with_the_config_unchanged(start_balancer, new_ca, http):
    first, second = new_ca(), new_ca()
    ca_file = first.folder / "backend-ca.pem"
    ca_file.write_bytes(first.ca_file.read_bytes())
    backend = Backend("game", tls=first.server_context(BACKEND_NAME))
    await backend.start()
    try:
        lb = await start_balancer(f"""
            routes: [{{name: all, pool: games}}]
            pools:
              games:
                backends: [{{id: game, address: "{backend.address}"}}]
                tls: {{ca: {ca_file}, server_name: {BACKEND_NAME}}}
            """)
        async with http.get(f"{lb.url}/") as resp:
            assert resp.status == 200
        # The backends move to certificates of a new CA; until the balancer re-reads its CA
        # file, it refuses them.
        await backend.stop()
        backend.tls = second.server_context(BACKEND_NAME)
        await backend.start(backend.port)
        ca_file.write_bytes(second.ca_file.read_bytes())
        async with http.get(f"{lb.url}/") as resp:
            assert resp.status == 502
        assert (await admin_reload(lb, http))[0] == 200
        async with http.get(f"{lb.url}/") as resp:
            assert resp.status == 200
    finally:
        await backend.stop()


async def test_certificate_expiry_is_exported_and_follows_renewals(start_balancer, backends, new_ca, http):
    pki, providers, backend_ca = new_ca(), new_ca(), new_ca()
    renew(pki, days=10)
    edge_cert, edge_key = backend_ca.pair("edge.internal")
    (game,) = await backends(1)
    lb = await start_balancer(f"""
        routes: [{{name: all, pool: web}}]
        pools:
          web:
            backends: {pool_yaml([game])}
            tls: {{ca: {backend_ca.ca_file}, certificate: {edge_cert}, key: {edge_key}}}
        """, listeners=tls_listener(pki.folder / "live.pem", pki.folder / "live.key",
                                    f", client_ca: {providers.ca_file}, client_certificate: optional"))

    async def expiries() -> dict[tuple[str, str, str], float]:
        async with http.get(f"{lb.admin_url}/metrics") as resp:
            samples = metric_samples(await resp.text())
        return {(dict(labels)["listener"], dict(labels)["pool"], dict(labels)["name"]): value
                for (name, labels), value in samples.items()
                if name == "balancer_certificate_expiry_timestamp_seconds"}

    now = datetime.datetime.now(datetime.timezone.utc).timestamp()
    found = await expiries()
    assert set(found) == {("public", "", "certificate"), ("public", "", "client_ca"),
                          ("", "web", "certificate"), ("", "web", "ca")}
    assert abs(found[("public", "", "certificate")] - (now + 10 * 86400)) < 3600
    assert all(value > now for value in found.values())
    renew(pki, days=60)
    assert (await admin_reload(lb, http))[0] == 200
    assert abs((await expiries())[("public", "", "certificate")] - (now + 60 * 86400)) < 3600
