"""The real balancer as a process (`python -m balancer run`), for tests that signal it.

`Instance.launch(config)` starts it and reads its log (stderr) as it comes; a test waits for
a log line (`await instance.logged("balancer ready")`), looks at its worker processes
(`children()`), signals it, and reads its exit code.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# How long a step of a process may take before a test gives up: a hang guard for a busy
# machine, not a performance claim.
PATIENCE = 60.0
# The `balancer` command pip installs beside the interpreter (pyproject.toml's entry point).
INSTALLED_COMMAND = (str(Path(sys.executable).with_name("balancer")),)


class Instance:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._new_line = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def launch(cls, config: Path | str, env: dict[str, str] | None = None,
                     command: tuple[str, ...] = (sys.executable, "-m", "balancer")) -> "Instance":
        """`command` is how the balancer is started: `python -m balancer` unless given (e.g.
        INSTALLED_COMMAND, what the systemd unit runs)."""
        proc = await asyncio.create_subprocess_exec(
            *command, "run", "--config", str(config),
            cwd=ROOT, stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.lines.append(line.decode(errors="replace"))
            self._new_line.set()
        self._new_line.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def logged(self, pattern: str, timeout: float = PATIENCE) -> re.Match:
        """The first log line matching `pattern`, waited for (it fails if the process ends)."""
        async def find() -> re.Match:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if match := re.search(pattern, line):
                        return match
                seen = len(self.lines)
                if self._reader.done():
                    raise AssertionError(f"exited ({self.proc.returncode}) before {pattern!r}:\n{self.log}")
                self._new_line.clear()
                await self._new_line.wait()
        return await asyncio.wait_for(find(), timeout)

    def children(self) -> list[int]:
        """The instance's worker processes (its direct children), as the kernel lists them."""
        return children_of(self.pid)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def exit_code(self, timeout: float = PATIENCE) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(child) for child in text.split()]


def alive(pid: int) -> bool:
    """Is `pid` a process that has not ended (a zombie has ended)?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def socket_owner(local_port: int, remote_port: int, pids: list[int]) -> int | None:
    """Which of `pids` holds the TCP socket 127.0.0.1:local_port <-> 127.0.0.1:remote_port
    (the kernel's /proc/net/tcp gives the socket's inode, /proc/PID/fd who holds it)."""
    want = (f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}")
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == want:
            inode = fields[9]
            break
    if inode is None:
        return None
    link = f"socket:[{inode}]"
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                try:
                    if os.readlink(fd) == link:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None
