"""`workers: 2`: two data-plane processes on SO_REUSEPORT behind one control process."""

import asyncio
import os
import re
import signal
import sys
import textwrap
from pathlib import Path

import aiohttp

from tests.conftest import pool_yaml
from tests.fakes.rawhttp import read_response
from tests.instance import alive, children_of, socket_owner
from tests.waiting import HANG_GUARD, until

ROOT = Path(__file__).resolve().parents[2]


def two_workers_config(tmp_path: Path, bs: list | None = None, routes_and_pools: str = "") -> Path:
    """Two workers serving one catch-all route to pool `web` of `bs`, or `routes_and_pools`."""
    config = tmp_path / "workers.yaml"
    config.write_text(textwrap.dedent("""
        listeners:
          - {name: public, address: 127.0.0.1:0}
        admin: {address: 127.0.0.1:0}
        workers: 2
        """) + textwrap.dedent(routes_and_pools or f"""
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            backends: {pool_yaml(bs or [])}
        """))
    return config


async def start_process(config: Path) -> tuple[asyncio.subprocess.Process, int, str, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "balancer", "run", "--config", str(config),
        cwd=ROOT, stderr=asyncio.subprocess.PIPE, env={**os.environ, "STICKY_SECRET": "s3cret"})
    lines: list[str] = []
    port = 0
    admin = ""
    assert proc.stderr is not None
    while not (port and admin and any("2 workers" in l for l in lines)):
        line = (await asyncio.wait_for(proc.stderr.readline(), HANG_GUARD)).decode()
        assert line, "balancer exited early:\n" + "".join(lines)
        lines.append(line)
        if m := re.search(r"listener public on [\d.]+:(\d+)", line):
            port = int(m.group(1))
        if m := re.search(r"admin on (http://\S+)", line):
            admin = m.group(1)
    return proc, port, admin, lines


async def test_two_workers_serve_sum_metrics_and_share_admin_actions(backends, tmp_path):
    bs = await backends(2)
    config = two_workers_config(tmp_path, bs)
    proc, port, admin, _ = await start_process(config)
    url = f"http://127.0.0.1:{port}"
    try:
        total = 60
        # Fresh connections each time, so the kernel spreads them over both workers. Each is
        # held open until it is known which worker accepted it.
        workers = children_of(proc.pid)
        assert len(workers) == 2
        took: set[int] = set()
        for _ in range(total):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await read_response(reader)).status == 200
            took.add(socket_owner(port, writer.get_extra_info("sockname")[1], workers))
            writer.close()
        assert took == set(workers)  # both workers took connections
        async with aiohttp.ClientSession() as session:
            async with session.get(admin + "/metrics") as resp:
                text = await resp.text()
            counted = sum(float(v) for v in re.findall(
                r'^balancer_requests_total\{[^}]*code="200"[^}]*\} (\S+)$', text, re.M))
            assert counted == total  # both workers' counts, summed
            async with session.post(admin + "/admin/pools/web/backends/b1/drain") as resp:
                assert resp.status == 200
            seen = set()
            for _ in range(20):
                async with aiohttp.ClientSession() as fresh:
                    async with fresh.get(url + "/") as resp:
                        seen.add((await resp.json())["backend"])
            assert seen == {"b2"}  # the drain reached every worker
            async with session.get(admin + "/admin/pools") as resp:
                states = {b["id"]: b["state"] for b in (await resp.json())["pools"][0]["backends"]}
            assert states["b1"] == "draining"
            async with session.post(admin + "/admin/reload") as resp:
                assert resp.status == 200 and (await resp.json()) == {"result": "reloaded"}
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), HANG_GUARD)
    assert code == 0


async def test_two_workers_share_a_split_change_and_sum_mirror_counts(backends, tmp_path):
    v1, v2, shadow = await backends("v1", "v2", "shadow")
    config = two_workers_config(tmp_path, routes_and_pools=f"""
        routes:
          - name: games
            split: [{{pool: v1, weight: 50}}, {{pool: v2, weight: 50}}]
            mirror: {{pool: shadow, percent: 100}}
        pools:
          v1: {{backends: {pool_yaml([v1])}}}
          v2: {{backends: {pool_yaml([v2])}}}
          shadow: {{backends: {pool_yaml([shadow])}}}
        """)
    proc, port, admin, _ = await start_process(config)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            body = {"split": [{"pool": "v1", "weight": 100}, {"pool": "v2", "weight": 0}]}
            async with session.post(admin + "/admin/routes/games/split", json=body) as resp:
                assert resp.status == 200
            seen = set()
            for _ in range(20):
                # New players on fresh connections, which the kernel spreads over both workers.
                async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as fresh:
                    async with fresh.get(url + "/") as resp:
                        seen.add(resp.headers["X-Backend"])
            assert seen == {"v1"}  # the change reached every worker
            async def copies() -> float:
                async with session.get(admin + "/metrics") as resp:
                    text = await resp.text()
                return sum(float(v) for v in re.findall(
                    r'^balancer_mirror_requests_total\{[^}]*result="sent"[^}]*\} (\S+)$', text, re.M))

            # The copies travel after the answers: wait for all 20.
            async def all_sent() -> bool:
                return await copies() >= 20

            await until(all_sent, "20 copies counted as sent", step=0.02)
            assert await copies() == 20 == shadow.count()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), HANG_GUARD)
    assert code == 0


async def test_a_dying_worker_takes_the_instance_down_with_exit_1(backends, tmp_path):
    """Half an instance that still reports ready would be worse than a restart."""
    bs = await backends(1)
    config = two_workers_config(tmp_path, bs)
    proc, _, _, lines = await start_process(config)
    pids = re.search(r"2 workers \(pids (\d+), (\d+)\)", "".join(lines))
    assert pids is not None
    os.kill(int(pids.group(1)), signal.SIGKILL)
    try:
        code = await asyncio.wait_for(proc.wait(), HANG_GUARD)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert code == 1
    await until(lambda: not alive(int(pids.group(2))), "the other worker stopped too")
