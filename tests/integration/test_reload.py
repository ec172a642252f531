"""Hot reload: validate first, swap atomically, keep backend state, never cut a connection."""

import asyncio
import os
import signal

import aiohttp

from tests.conftest import pool_yaml


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
    """Zero failed requests, zero closed sockets while reloading repeatedly."""
    bs = await backends(2)
    lb = await start_balancer(config(bs))
    sockets = [await http.ws_connect(lb.url + f"/ws/{i}") for i in range(10)]
    failures = 0
    done = 0
    stop = asyncio.Event()

    async def player() -> None:
        nonlocal failures, done
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    async with session.get(lb.url + "/spin") as resp:
                        await resp.read()
                        if resp.status != 200:
                            failures += 1
                except aiohttp.ClientError:
                    failures += 1
                done += 1

    players = [asyncio.create_task(player()) for _ in range(8)]
    for i in range(6):
        prefix = "/" if i % 2 == 0 else ""
        assert await lb.reload_with(config(bs, route_prefix=prefix or "/")) == []
        await asyncio.sleep(0.15)
    stop.set()
    await asyncio.gather(*players)
    for i, ws in enumerate(sockets):
        await ws.send_str(f"m{i}")
        assert (await ws.receive_str(timeout=2)).endswith(f":m{i}")
        assert not ws.closed
        await ws.close()
    print(f"reload under load: {done} requests, {failures} failed, 10 websockets kept")
    assert done > 50 and failures == 0


async def test_sighup_reloads(start_balancer, backends, http):
    """The running app reacts to SIGHUP the way `serve()` wires it."""
    bs = await backends(1)
    lb = await start_balancer(config(bs))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(lb.app.reload_everywhere()))
    try:
        from tests.conftest import balancer_yaml

        lb.path.write_text(balancer_yaml(config(bs, extra_route='          - {name: hup, pool: web, match: {path_prefix: "/hup"}}')))
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(40):
            if any(r.name == "hup" for r in lb.app.runtime.routes.routes):
                break
            await asyncio.sleep(0.05)
        assert any(r.name == "hup" for r in lb.app.runtime.routes.routes)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


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
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)).startswith(b"HTTP/1.1 200")
    writer.close()
    # ...while its port no longer accepts
    try:
        _, other = await asyncio.open_connection("127.0.0.1", second)
        other.close()
        refused = False
    except OSError:
        refused = True
    assert refused
