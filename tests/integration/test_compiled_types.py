"""Values the pure modules accept and the compiled build must accept alike.

The request path is compiled with Cython, typed by the `.pxd` files beside the modules
(docs/decisions.md). A typed attribute or argument checks and converts what it is given where
the Python code would take anything: a C integer overflows, a `str` field refuses a subclass of
str, and a field typed as a class may hold None and then be read as if it did not. Each test
here goes through the real balancer with a value of that kind that a config, a plugin or a
backend can really produce, and passes in both builds (`BALANCER_PURE_PYTHON=1` for the pure).
"""

from __future__ import annotations

import asyncio
import enum

import pytest

from balancer.plugins import Plugin, PluginRequest
from tests.conftest import one_pool, pool_yaml
from tests.fakes.rawhttp import RawBackend, closed_after, read_response

# Larger than any C integer (sys.maxsize is 2**63 - 1): how an operator writes "no limit".
HUGE = 10**20


async def test_limits_beyond_a_c_integer_mean_no_limit(start_balancer, backends, http):
    """`limits` take any positive integer (docs/configuration.md); the compiled reader keeps
    them as C integers, which must not make every connection fail."""
    bs = await backends(1)
    lb = await start_balancer(one_pool(bs, top=(
        f"limits: {{max_url_bytes: {HUGE}, max_header_bytes: {HUGE}, "
        f"max_header_count: {HUGE}, max_body_bytes: {HUGE}}}")))
    async with http.get(lb.url + "/lobby") as resp:
        assert resp.status == 200
    async with http.post(lb.url + "/bet", data=b"x" * 100_000) as resp:
        assert resp.status == 200
    assert bs[0].bodies[-1] == b"x" * 100_000


class Tag(str, enum.Enum):
    """A plugin's own constants, as str subclasses (enum members, StrEnum and the like)."""

    MAINTENANCE = "maintenance-window.7"


class TagRequestId(Plugin):
    """Names every request with one of its constants."""

    def on_request(self, request: PluginRequest) -> None:
        request.request_id = Tag.MAINTENANCE


async def test_a_plugin_may_set_the_request_id_to_a_str_subclass(start_balancer, backends, http):
    """`PluginRequest.request_id` takes any str of the allowed characters; a str subclass
    passes its check and must reach the backend and the error answers, not fail the plugin."""
    bs = await backends(1)
    lb = await start_balancer(f"""
        routes:
          - name: tagged
            pool: web
            plugins: [{{'{__name__}:TagRequestId': {{}}}}]
        pools:
          web:
            backends: {pool_yaml(bs)}
        """)
    async with http.get(lb.url + "/lobby") as resp:
        assert resp.status == 200
    seen = {name.lower(): value for name, value in bs[0].seen_headers[-1].items()}
    assert seen["x-request-id"] == "maintenance-window.7"
    await bs[0].stop()  # the balancer's own answers quote the id too
    async with http.get(lb.url + "/lobby") as resp:
        assert resp.status == 502
        assert (await resp.json())["request_id"] == "maintenance-window.7"


UPGRADE = (b"GET /ws/table HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def assert_only_a_protocol_error(lb, backend: RawBackend) -> None:
    """The backend's bad 101 counted as a protocol error and left nothing open on it."""
    state = lb.app.pools["web"].backends[backend.name]
    assert (state.websockets, state.active_requests, len(state.tunnels)) == (0, 0, 0)
    assert state.upstream_errors == {"protocol": 1}


@pytest.mark.parametrize("switch", [
    pytest.param(b"Connection: upgrade\r\n", id="no-upgrade-header"),
    pytest.param(b"Upgrade: websocket\r\n", id="no-connection-upgrade"),
])
async def test_a_101_that_names_no_protocol_is_a_bad_answer(start_balancer, switch: bytes):
    """RFC 9110 §15.2.2: a 101 says what it switches to (Upgrade, named by Connection). Without
    that the backend's parser reads on as HTTP: the player gets a 502, not half a tunnel whose
    WebSocket count never goes down (and whose finish would read the reader it let go)."""
    backend = await RawBackend(
        response=b"HTTP/1.1 101 Switching Protocols\r\n" + switch + b"\r\n").start()
    try:
        lb = await start_balancer(one_pool([backend]))
        reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
        writer.write(UPGRADE % b"casino.test")
        try:
            response = await read_response(reader)
            assert response.status == 502
            # The reader stopped at the upgrade head: nothing more can be read on this connection.
            assert response.header("connection") == "close" and await closed_after(reader)
        finally:
            writer.close()
        assert_only_a_protocol_error(lb, backend)
    finally:
        await backend.stop()


async def test_a_101_to_a_request_that_asked_for_no_upgrade_is_a_bad_answer(start_balancer):
    """RFC 9110 §15.2.2: a server switches protocols only when the request asked to. A 101 to a
    plain GET must not turn the player's HTTP connection into a raw pipe to the backend."""
    backend = await RawBackend(response=b"HTTP/1.1 101 Switching Protocols\r\n"
                                        b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n").start()
    try:
        lb = await start_balancer(one_pool([backend]))
        reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
        writer.write(b"GET /lobby HTTP/1.1\r\nHost: casino.test\r\n\r\n")
        try:
            response = await read_response(reader)
            assert response.status == 502
        finally:
            writer.close()
        assert_only_a_protocol_error(lb, backend)
    finally:
        await backend.stop()


@pytest.mark.parametrize("case", ["no route", "backend down", "plugin answer"])
async def test_an_answer_of_the_balancers_own_to_an_upgrade_request_closes(start_balancer, backends, case):
    """The balancer's own answers to an upgrade request (its errors, a plugin's answer) end
    the connection, as a backend's refusal does: the reader stopped at the upgrade head, so a
    request sent after it would never be read."""
    bs = await backends(1)
    plugins = "[{'tests.example_plugins.probes:Teapot': {status: 429}}]" if case == "plugin answer" else "[]"
    lb = await start_balancer(f"""
        routes:
          - {{name: games, pool: web, match: {{host: casino.test}}, plugins: {plugins}}}
        pools:
          web:
            backends: {pool_yaml(bs)}
        """)
    if case == "backend down":
        await bs[0].stop()
    host = b"elsewhere.test" if case == "no route" else b"casino.test"
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    writer.write(UPGRADE % host)
    try:
        response = await read_response(reader)
        assert response.status == {"no route": 404, "backend down": 502, "plugin answer": 429}[case]
        assert response.header("connection") == "close" and await closed_after(reader)
    finally:
        writer.close()
