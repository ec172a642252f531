"""Hot reload: validate first, swap atomically, keep backend state, never cut a connection."""

import asyncio
import signal

import aiohttp
import pytest

from tests.conftest import balancer_yaml, one_pool, pool_yaml
from tests.fakes.backends import free_port
from tests.fakes.h2client import RawH2
from tests.instance import PATIENCE, Instance
from tests.waiting import HANG_GUARD, until


def config(bs, route_prefix: str = "/", extra_route: str = "") -> str:
    return f"""
        routes:
{extra_route}
          - {{name: all, pool: web, match: {{path_prefix: "{route_prefix}"}}}}
        pools:
          web:
            backends: {pool_yaml(bs)}
        """


async def test_refused_reload_changes_nothing_and_is_reported(start_balancer, backends, http):
    bs = await backends(1)
    lb = await start_balancer(config(bs))
    good = lb.path.read_text()
    lb.path.write_text(good.replace("pool: web", "pool: nowhere") + "\nlimits: {max_header_byts: 1}\n")
    async with http.post(lb.admin_url + "/admin/reload") as resp:
        assert resp.status == 400
        errors = (await resp.json())["errors"]
    assert any("routes.0.pool" in e for e in errors)
    assert any("limits.max_header_byts: unknown key" in e for e in errors)
    async with http.get(lb.url + "/x") as resp:
        assert resp.status == 200  # still the old config
    async with http.get(lb.admin_url + "/metrics") as resp:
        text = await resp.text()
    assert 'balancer_config_reloads_total{result="failure"} 1.0' in text


async def test_reload_swaps_routes_and_keeps_backend_state(start_balancer, backends, http):
    bs = await backends(2)
    lb = await start_balancer(config(bs))
    pool = lb.app.pools["web"]
    b1 = pool.backends["b1"]
    b1.ejections_total = 3  # state that must survive: same object, same counters
    errors = await lb.reload_with(config(bs, extra_route='          - {name: api, pool: web, match: {path_prefix: "/api/", methods: [POST]}}'))
    assert errors == []
    assert lb.app.pools["web"].backends["b1"] is b1 and b1.ejections_total == 3
    async with http.post(lb.url + "/api/bet", data=b"x") as resp:
        assert resp.status == 200
    async with http.get(lb.admin_url + "/metrics") as resp:
        text = await resp.text()
    assert 'route="api"' in text
    assert 'balancer_config_reloads_total{result="success"} 1.0' in text


async def test_backend_removed_by_reload_drains_its_websocket(start_balancer, backends, http):
    bs = await backends(2)
    lb = await start_balancer(config(bs))
    ws = await http.ws_connect(lb.url + "/ws/t")
    await ws.send_str("a")
    first = await ws.receive_str(timeout=2)
    serving = first.split(":")[0]
    other = [b for b in bs if b.name != serving]
    assert await lb.reload_with(config(other)) == []
    pool = lb.app.pools["web"]
    assert pool.backends[serving].draining  # drained, not cut
    await ws.send_str("still here")
    assert await ws.receive_str(timeout=2) == f"{serving}:still here"
    for _ in range(5):  # new players go elsewhere
        async with http.get(lb.url + "/n") as resp:
            assert (await resp.json())["backend"] != serving
    await ws.close()


async def test_reload_under_load_with_websockets_open(start_balancer, backends, http):
    """Zero failed requests, zero closed sockets while reloading repeatedly, each reload
    changing routes, pools and listeners, each change seen to take effect."""
    b1, b2, b3 = await backends(3)

    def generation(i: int) -> str:
        # Odd generations: a route /api/ to a second pool, b3 also in pool web, and a second
        # listener; even ones: none of that.
        odd = i % 2 == 1
        lines = ["routes:"]
        if odd:
            lines.append('  - {name: api, pool: extra, match: {path_prefix: "/api/"}}')
        lines += ["  - {name: all, pool: web}", "pools:",
                  f"  web: {{backends: {pool_yaml([b1, b2, b3] if odd else [b1, b2])}}}"]
        if odd:
            lines.append(f"  extra: {{backends: {pool_yaml([b3])}}}")
        listeners = "listeners:\n  - {name: public, address: 127.0.0.1:0}\n"
        if odd:
            listeners += "  - {name: second, address: 127.0.0.1:0}\n"
        return balancer_yaml("\n".join(lines) + "\n", listeners=listeners)

    lb = await start_balancer(generation(0), raw=True)
    sockets = [await http.ws_connect(lb.url + f"/ws/{i}") for i in range(10)]
    failures: list[str] = []
    done = 0
    stop = asyncio.Event()

    async def player() -> None:
        nonlocal done
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    async with session.get(lb.url + "/spin") as resp:
                        await resp.read()
                        if resp.status != 200:
                            failures.append(str(resp.status))
                except aiohttp.ClientError as exc:
                    failures.append(repr(exc))
                done += 1

    players = [asyncio.create_task(player()) for _ in range(8)]
    for i in range(1, 7):
        assert await lb.reload_with(generation(i), raw=True) == []
        # The change is in force: /api/ goes to the extra pool (b3) or to web (b1/b2), and
        # the second listener answers, or is gone.
        async with http.get(lb.url + "/api/x") as resp:
            assert resp.status == 200
            assert (resp.headers["X-Backend"] == "b3") == (i % 2 == 1)
        if i % 2:
            async with http.get(f"http://127.0.0.1:{lb.port('second')}/spin") as resp:
                assert resp.status == 200
        else:
            assert "second" not in lb.app.listeners
            assert set(lb.app.pools) == {"web"}
    stop.set()
    await asyncio.gather(*players)
    for i, ws in enumerate(sockets):
        await ws.send_str(f"m{i}")
        assert (await ws.receive_str(timeout=PATIENCE)).endswith(f":m{i}")
        assert not ws.closed
        await ws.close()
    print(f"reload under load: {done} requests, {len(failures)} failed, 10 websockets kept")
    assert failures == [] and done > 50


@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_reloads_the_real_process(backends, tmp_path, workers):
    """`balancer run` reloads on SIGHUP: the signal goes to the process, as an operator's
    `systemctl reload` sends it; with workers, every worker takes the new config."""
    b1, b2 = await backends(2)
    port = free_port()
    path = tmp_path / "balancer.yaml"

    def text(extra_route: str = "") -> str:
        return balancer_yaml(f"""
            workers: {workers}
            routes:
            {extra_route}
              - {{name: all, pool: web}}
            pools:
              web:
                backends: {pool_yaml([b1])}
              hup:
                backends: {pool_yaml([b2])}
            """, listeners=f"listeners:\n  - {{name: public, address: '127.0.0.1:{port}'}}\n")
    path.write_text(text())
    instance = await Instance.launch(path)
    try:
        await instance.logged("balancer ready: 2 workers" if workers == 2 else "balancer ready")
        url = f"http://127.0.0.1:{port}/hup/x"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as resp:
                assert resp.headers["X-Backend"] == "b1"
            path.write_text(text('  - {name: hup, pool: hup, match: {path_prefix: "/hup/"}}'))
            instance.signal(signal.SIGHUP)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + PATIENCE
            while instance.log.count("config reloaded") < workers + (1 if workers == 2 else 0):
                assert loop.time() < deadline, instance.log
                await asyncio.sleep(0.05)
            for _ in range(20):  # fresh connections: with workers, both are asked
                async with aiohttp.ClientSession() as fresh:
                    async with fresh.get(url) as resp:
                        assert resp.headers["X-Backend"] == "b2"
        instance.signal(signal.SIGTERM)
        assert await instance.exit_code() == 0
    finally:
        await instance.kill()


async def test_listeners_added_and_removed_without_cutting_connections(start_balancer, backends):
    from tests.conftest import balancer_yaml

    bs = await backends(1)
    two = ("listeners:\n  - {name: public, address: 127.0.0.1:0}\n"
           "  - {name: second, address: 127.0.0.1:0}\n")
    lb = await start_balancer(config(bs))
    assert await lb.reload_with(balancer_yaml(config(bs), listeners=two), raw=True) == []
    second = lb.port("second")
    reader, writer = await asyncio.open_connection("127.0.0.1", second)
    request = b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n"
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    assert await lb.reload_with(config(bs)) == []
    assert "second" not in lb.app.listeners
    # the keep-alive connection on the removed listener still works...
    writer.write(request)
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG_GUARD)).startswith(b"HTTP/1.1 200")
    writer.close()
    # ...while its port no longer accepts
    try:
        _, other = await asyncio.open_connection("127.0.0.1", second)
        other.close()
        refused = False
    except OSError:
        refused = True
    assert refused


async def test_a_reload_changes_a_pool_setting_of_a_pool_that_stays(start_balancer, backends, http):
    """The new generation takes the new settings of a pool that already existed (its Pool
    object, with the backends' state, outlives the reload)."""
    (slow,) = await backends(1)
    slow.mode, slow.hang_seconds = "hang", 0.5
    lb = await start_balancer(one_pool([slow], "timeouts: {response: 100ms}"))
    async with http.get(f"{lb.url}/") as resp:
        assert resp.status == 504
    assert await lb.reload_with(one_pool([slow], "timeouts: {response: 20s}")) == []
    async with http.get(f"{lb.url}/") as resp:
        assert resp.status == 200


async def test_a_retired_http2_listener_says_goaway_and_its_open_stream_finishes(start_balancer, backends):
    """A reload that removes an h2c listener: its HTTP/2 connections get GOAWAY (NO_ERROR, the
    last stream id) at once, the stream in progress is still answered in full, then the
    connection closes. (A raw client: h2 as a client stops reading at GOAWAY.)"""
    (slow,) = await backends(1)
    slow.mode, slow.hang_seconds = "hang", 3.0  # still in progress at the reload, busy or not
    two = ("listeners:\n  - {name: public, address: 127.0.0.1:0}\n"
           "  - {name: second, address: 127.0.0.1:0, http2: true}\n")
    lb = await start_balancer(config([slow]), listeners=two)
    raw = await RawH2.open(lb.port("second"))
    try:
        raw.send(raw.headers(1, RawH2.get(1, "/round")))
        await until(lambda: slow.count() == 1, "the stream's request at the backend")
        assert await lb.reload_with(config([slow])) == []
        assert await raw.graceful_goaway_then_answer(1) == b"200"
    finally:
        raw.close()
