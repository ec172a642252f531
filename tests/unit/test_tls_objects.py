"""The TLS objects every context of the balancer makes (tls.DirectSSLObject) behave as the
standard library's: a handshake, data both ways (into a buffer too), `pending`, and the end of a
connection, over memory BIOs as the event loop's TLS layer drives them."""

from __future__ import annotations

import ssl

import pytest
import trustme

from balancer.tls import DirectSSLObject, harden


def _pump(source: ssl.MemoryBIO, sink: ssl.MemoryBIO) -> None:
    data = source.read()
    if data:
        sink.write(data)


@pytest.fixture
def pair() -> tuple[ssl.SSLObject, ssl.SSLObject, list[ssl.MemoryBIO]]:
    ca = trustme.CA()
    server_context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ca.issue_cert("games.example").configure_cert(server_context)
    client_context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ca.configure_trust(client_context)
    bios = [ssl.MemoryBIO() for _ in range(4)]  # client in/out, server in/out
    client = client_context.wrap_bio(bios[0], bios[1], server_hostname="games.example")
    server = server_context.wrap_bio(bios[2], bios[3], server_side=True)
    for _ in range(10):
        done = 0
        for side in (client, server):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        _pump(bios[1], bios[2])
        _pump(bios[3], bios[0])
        if done == 2:
            break
    return client, server, bios


def test_every_context_makes_direct_objects(pair) -> None:
    client, server, _ = pair
    assert type(client) is DirectSSLObject and type(server) is DirectSSLObject
    assert client.version() == server.version() == "TLSv1.3"
    assert server.selected_alpn_protocol() == "http/1.1"


def test_data_both_ways_pending_and_buffers(pair) -> None:
    client, server, bios = pair
    assert client.write(b"GET / HTTP/1.1\r\n\r\n") == 18
    _pump(bios[1], bios[2])
    assert server.read(5) == b"GET /"
    assert server.pending() == 13  # the rest of the record, decrypted already
    buffer = bytearray(64)
    assert server.read(64, buffer) == 13
    assert bytes(buffer[:13]) == b" HTTP/1.1\r\n\r\n"
    with pytest.raises(ssl.SSLWantReadError):
        server.read(64)

    server.write(b"HTTP/1.1 200 OK\r\n\r\n")
    _pump(bios[3], bios[0])
    assert client.read(1024) == b"HTTP/1.1 200 OK\r\n\r\n"


def test_close_notify_reads_as_the_end(pair) -> None:
    client, server, bios = pair
    with pytest.raises(ssl.SSLWantReadError):
        client.unwrap()  # sends close_notify, waits for the server's
    _pump(bios[1], bios[2])
    assert server.read(1024) == b""
