"""SIGTERM or SIGINT at any moment from exec on ends the instance cleanly (docs/operations.md,
"Shutdown"): exit 0, no worker left behind, its Consul registration removed if it was made.

Each test runs the real `balancer run` process and signals it at one stage: while it reads its
config, while Consul holds its registration unanswered, while its workers start, while it
runs, and while it reloads. A stage is reached by an event, not by waiting: a config file that
is a named pipe holds the process in the read until the test writes it; a Consul double that
never answers holds it in the registration.
"""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import pool_yaml
from tests.fakes.backends import free_port
from tests.fakes.consul import FakeConsul
from tests.instance import INSTALLED_COMMAND, PATIENCE, ROOT, Instance, alive

SLOW_IMPORT = ROOT / "tests" / "fakes" / "slow_import"
REGISTER = "  register: {service: edge-balancer, check: {http: /healthz, interval: 200ms}}\n"


def config_text(consul: FakeConsul, backends: list, *, workers: int = 1, register: bool = True) -> str:
    return (f"consul:\n  address: {consul.address}\n  wait: 1s\n" + (REGISTER if register else "")
            + textwrap.dedent(f"""\
                listeners:
                  - {{name: public, address: "127.0.0.1:{free_port()}"}}
                admin: {{address: "127.0.0.1:0"}}
                workers: {workers}
                shutdown_timeout: 5s
                routes:
                  - {{name: all, pool: web}}
                pools:
                  web:
                    backends: {pool_yaml(backends)}
                """))


def ready(workers: int) -> str:
    """The log line of an instance that is ready: the control process's, with workers (each
    worker logs a "balancer ready" of its own before that)."""
    return "balancer ready: 2 workers" if workers == 2 else "balancer ready"


async def registrations(consul: FakeConsul) -> dict:
    async with aiohttp.ClientSession() as client:
        async with client.get(consul.address + "/v1/agent/services") as resp:
            return {k: v for k, v in (await resp.json()).items() if v["Service"] == "edge-balancer"}


async def reader_waiting(pipe: Path) -> int:
    """Wait until a process opened the named pipe `pipe` for reading; returns a write end."""
    while True:
        try:
            return os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: nobody reads it yet
            await asyncio.sleep(0.01)


async def feed(pipe: Path, text: str, until: Instance) -> None:
    """Give `text` to every reader of `pipe` until the process ends (workers read it too)."""
    while until.proc.returncode is None:
        fd = await reader_waiting_or_exit(pipe, until)
        if fd is None:
            return
        try:
            os.write(fd, text.encode())
        except (BlockingIOError, BrokenPipeError):
            # BrokenPipeError: two workers opened the pipe at once and the other one took the
            # text; this one is served by the next round (a dead feeder would leave it
            # blocked in open() for good, and the stop would end in a SIGKILL).
            pass
        finally:
            os.close(fd)
        await asyncio.sleep(0.05)  # the reader sees the end before the next writer comes


async def reader_waiting_or_exit(pipe: Path, until: Instance) -> int | None:
    waiting = asyncio.ensure_future(reader_waiting(pipe))
    ended = asyncio.ensure_future(until.proc.wait())
    await asyncio.wait((waiting, ended), return_when=asyncio.FIRST_COMPLETED)
    if waiting.done():
        ended.cancel()
        return waiting.result()
    waiting.cancel()
    return None


async def ended_cleanly(instance: Instance, consul: FakeConsul, workers: list[int] = ()) -> None:
    """Exit 0, the registration gone, every worker ended."""
    try:
        assert await instance.exit_code() == 0, instance.log
    finally:
        await instance.kill()
    assert await registrations(consul) == {}, instance.log
    assert [pid for pid in workers if alive(pid)] == []


@pytest.fixture
async def consul():
    fake = FakeConsul()
    await fake.start()
    yield fake
    fake.recover()
    await fake.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_while_the_config_is_read_ends_before_anything_starts(consul, backends, tmp_path, sig):
    bs = await backends(1)
    pipe = tmp_path / "balancer.yaml"
    os.mkfifo(pipe)
    instance = await Instance.launch(pipe)
    fd = await reader_waiting(pipe)  # it is reading its config now
    instance.signal(sig)
    os.write(fd, config_text(consul, bs).encode())
    os.close(fd)
    await ended_cleanly(instance, consul)
    assert "listener public" not in instance.log
    assert not [r for r in consul.requests if r.method == "PUT"]  # never registered


@pytest.mark.parametrize("command", ["installed", "python -m"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_while_the_modules_load_ends_before_anything_starts(
        consul, backends, tmp_path, sig, command):
    """The installed `balancer` command (what the systemd unit runs) and `python -m balancer`
    alike: held in the import of PyYAML, before the config is even read."""
    bs = await backends(1)
    path = tmp_path / "balancer.yaml"
    path.write_text(config_text(consul, bs))
    gate = tmp_path / "import-gate"
    os.mkfifo(gate)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(SLOW_IMPORT), os.environ.get("PYTHONPATH")])),
           "BALANCER_TEST_IMPORT_GATE": str(gate)}
    instance = await Instance.launch(
        path, env, **({"command": INSTALLED_COMMAND} if command == "installed" else {}))
    await instance.logged("importing yaml")
    fd = await asyncio.wait_for(reader_waiting(gate), PATIENCE)  # it waits in the import now
    instance.signal(sig)
    os.close(fd)
    await ended_cleanly(instance, consul)
    assert "stop asked while loading the config: nothing started" in instance.log
    assert "listener public" not in instance.log
    assert not [r for r in consul.requests if r.method == "PUT"]  # never registered


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_while_consul_holds_the_registration(consul, backends, tmp_path, sig, workers):
    bs = await backends(1)
    # Consul takes the registration and never answers: the instance waits in its start-up.
    consul.misbehave("apply_and_hang", path="/v1/agent/service/register")
    path = tmp_path / "balancer.yaml"
    path.write_text(config_text(consul, bs, workers=workers))
    instance = await Instance.launch(path)
    while not consul.hung:
        await asyncio.sleep(0.01)
        assert instance.proc.returncode is None, instance.log
    assert len(await registrations(consul)) == 1  # made, though never answered
    children = instance.children()
    instance.signal(sig)
    await ended_cleanly(instance, consul, children)
    # The instance (a single process, or the control process of workers) never got ready.
    assert ready(workers) not in instance.log


async def test_a_stop_while_the_workers_start(consul, backends, tmp_path):
    bs = await backends(1)
    path = tmp_path / "balancer.yaml"
    path.write_text(config_text(consul, bs, workers=2))
    instance = await Instance.launch(path)
    children: list[int] = []
    while len(children) < 2:  # both forked: they are starting now
        children = instance.children()
        assert instance.proc.returncode is None, instance.log
        await asyncio.sleep(0.001)
    instance.signal(signal.SIGTERM)
    await ended_cleanly(instance, consul, children)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_while_running(consul, backends, tmp_path, sig, workers):
    bs = await backends(1)
    path = tmp_path / "balancer.yaml"
    path.write_text(config_text(consul, bs, workers=workers))
    instance = await Instance.launch(path)
    await instance.logged(ready(workers))
    await instance.logged("consul: registered")
    assert len(await registrations(consul)) == 1
    children = instance.children()
    assert len(children) == (2 if workers == 2 else 0)
    instance.signal(sig)
    await ended_cleanly(instance, consul, children)


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_stop_while_reloading(consul, backends, tmp_path, workers):
    bs = await backends(1)
    path = tmp_path / "balancer.yaml"
    text = config_text(consul, bs, workers=workers)
    path.write_text(text)
    instance = await Instance.launch(path)
    await instance.logged(ready(workers))
    await instance.logged("consul: registered")
    children = instance.children()
    # The next read of the config blocks in a named pipe: the reload is under way until the
    # test writes it, and the stop comes in the middle of it.
    pipe = tmp_path / "next.yaml"
    os.mkfifo(pipe)
    os.replace(pipe, path)
    instance.signal(signal.SIGHUP)
    fd = await asyncio.wait_for(reader_waiting(path), PATIENCE)
    instance.signal(signal.SIGTERM)
    os.write(fd, text.replace("shutdown_timeout: 5s", "shutdown_timeout: 4s").encode())
    os.close(fd)
    feeding = asyncio.get_running_loop().create_task(feed(path, text, instance))
    await ended_cleanly(instance, consul, children)
    await feeding
