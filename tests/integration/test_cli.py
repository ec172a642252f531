"""The command line (README.md, "Commands"): `balancer check` and `balancer run`, as real processes."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.rawhttp import read_response
from tests.waiting import HANG_GUARD, until

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
if not Path(PYTHON).exists():  # e.g. a CI image with the package installed system-wide
    PYTHON = sys.executable


def balancer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "balancer", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


# -- check -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["config/example.yaml", "config/demo.yaml"])
def test_check_accepts_the_shipped_configs(config: str) -> None:
    result = balancer("check", "--config", config)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_check_lists_every_error_one_per_line_with_its_dotted_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "listeners:\n"
        "  - {name: public, address: 127.0.0.1:8080}\n"
        "limits:\n"
        "  max_header_byts: 100\n"
        "routes:\n"
        "  - {name: lobby, pool: nowhere}\n"
        "  - {name: cashier}\n"
        "pools:\n"
        "  web:\n"
        "    backends: [{id: a, address: 127.0.0.1:9000}]\n"
        "    timeouts: {respons: 1s}\n"
    )
    result = balancer("check", "--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    line_shape = re.compile(re.escape(str(path)) + r": [A-Za-z0-9_.\[\]-]+: \S.*")
    for line in lines:
        assert line_shape.fullmatch(line), line
    assert f"{path}: limits.max_header_byts: unknown key" in lines
    assert f"{path}: pools.web.timeouts.respons: unknown key" in lines
    by_path = {line.split(": ")[1] for line in lines}
    # A route naming a pool that does not exist, and one naming none at all.
    assert {"routes.0.pool", "routes.1.pool"} <= by_path
    assert any("nowhere" in line for line in lines)
    assert len(lines) == 4


def test_check_of_a_missing_file_is_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = balancer("check", "--config", str(missing))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{missing}: ")


def test_run_refuses_an_invalid_config_with_the_same_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("listeners: []\nroutes: []\npools: {}\nlimits: {max_header_byts: 1}\n")
    result = balancer("run", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}: limits.max_header_byts: unknown key" in result.stderr.splitlines()


# -- run and graceful stop ---------------------------------------------------------------------------


class BalancerProcess:
    """`python -m balancer run` in a child process; its listener port read from its log."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log: list[str] = []
        self.port = 0
        self._drain: asyncio.Task | None = None

    @classmethod
    async def start(cls, config: Path) -> "BalancerProcess":
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "balancer", "run", "--config", str(config), cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        self = cls(proc)
        await asyncio.wait_for(self._until_ready(), 20)
        self._drain = asyncio.ensure_future(self._read_rest())
        return self

    async def _until_ready(self) -> None:
        assert self.proc.stderr is not None
        while True:
            line = (await self.proc.stderr.readline()).decode()
            if not line:
                raise AssertionError("balancer exited before it was ready:\n" + "".join(self.log))
            self.log.append(line)
            found = re.search(r"listener public on 127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
            if "balancer ready" in line:  # signal handlers are installed from here on
                assert self.port
                return

    async def _read_rest(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.log.append(line.decode())

    async def wait(self, timeout: float) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._drain is not None:
            await self._drain
        return code

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_stop_signal_finishes_the_request_in_flight_refuses_new_ones_and_exits_0(tmp_path, backends, stop):
    (b,) = await backends(1)
    b.mode = "hold"  # the cash-out stays in flight until the refusal has been seen
    config = tmp_path / "run.yaml"
    config.write_text(
        "listeners:\n  - {name: public, address: 127.0.0.1:0}\n"
        "admin: {address: 127.0.0.1:0}\n"
        "shutdown_timeout: 10s\n"
        "routes:\n  - {name: all, pool: web}\n"
        f"pools:\n  web:\n    backends: [{{id: b1, address: '{b.address}'}}]\n"
    )
    lb = await BalancerProcess.start(config)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
        writer.write(b"POST /cashout HTTP/1.1\r\nHost: casino.test\r\nContent-Length: 3\r\n\r\n100")
        await until(lambda: b.count() == 1, "the cash-out reached the backend")
        lb.proc.send_signal(stop)

        async def refused() -> bool:
            try:
                _, probe = await asyncio.open_connection("127.0.0.1", lb.port)
            except ConnectionRefusedError:
                return True
            probe.close()
            return False

        await until(refused, "new connections refused after the stop signal", step=0.02)
        assert lb.proc.returncode is None  # still running: the cash-out is in flight

        b.released.set()
        response = await read_response(reader, timeout=HANG_GUARD)
        assert response.status == 200
        assert response.json()["body_bytes"] == 3
        writer.close()
        assert await lb.wait(timeout=10) == 0, "".join(lb.log)
    finally:
        lb.kill()
    assert b.count() == 1  # finished once, never retried elsewhere
