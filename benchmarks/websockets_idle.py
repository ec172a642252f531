"""Memory of idle proxied WebSockets in one balancer worker.

Starts a minimal WebSocket backend (answers the upgrade, then holds the connection), the
balancer with one worker, and opens N WebSockets through it from this process. Prints the
balancer's RSS before and after, and per WebSocket. Targets: at most 4.5 KiB per idle
WebSocket and at most 80 MiB RSS for 10,000 in one worker (start-up included).

Each proxied WebSocket costs the balancer two file descriptors (player side, backend side); on
machines whose hard RLIMIT_NOFILE is 20000 and cannot be raised, one process cannot hold 10,000,
so the default N is the most that fits and the 10,000 figure is extrapolated from the measured
per-socket cost (both are printed).

    .venv/bin/python benchmarks/websockets_idle.py [--count N]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PER_SOCKET_TARGET_KIB = 4.5
TOTAL_TARGET_MIB = 80  # for 10,000, the worker's start-up memory included

BACKEND = r'''
import asyncio, base64, hashlib, sys, uvloop
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
class Holder(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, data):
        if self.buf is None: return
        self.buf += data
        if b"\r\n\r\n" not in self.buf: return
        head = self.buf.split(b"\r\n\r\n")[0]
        key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key:")]
        accept = base64.b64encode(hashlib.sha1(key[0] + GUID).digest()) if key else b""
        self.t.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self.buf = None
async def main():
    server = await asyncio.get_running_loop().create_server(Holder, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await asyncio.sleep(3600)
uvloop.run(main())
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


async def open_websocket(port: int) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    writer.write(b"GET /ws/idle HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\n"
                 b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head[:80])
    expected = base64.b64encode(hashlib.sha1(key + GUID).digest())
    if expected not in head:
        raise RuntimeError("bad Sec-WebSocket-Accept")
    return writer


async def open_many(port: int, count: int, batch: int = 250) -> list[asyncio.StreamWriter]:
    writers: list[asyncio.StreamWriter] = []
    for start in range(0, count, batch):
        writers += await asyncio.gather(*(open_websocket(port) for _ in range(min(batch, count - start))))
    return writers


def default_count() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return min(10_000, (hard - 200) // 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=default_count())
    args = parser.parse_args()
    import uvloop

    python = str(ROOT / ".venv" / "bin" / "python")
    if not Path(python).exists():
        python = sys.executable
    work = Path(tempfile.mkdtemp(prefix="ws-bench-"))
    backend_port, lb_port, admin_port = free_port(), free_port(), free_port()
    (work / "backend.py").write_text(BACKEND)
    (work / "lb.yaml").write_text(f"""
listeners:
  - {{name: public, address: 127.0.0.1:{lb_port}}}
admin: {{address: 127.0.0.1:{admin_port}}}
limits: {{max_connections: 20000}}
routes:
  - {{name: live, pool: live}}
pools:
  live:
    max_connections_per_backend: 20000
    timeouts: {{websocket_idle: 1h}}
    backends:
      - {{id: ws-1, address: 127.0.0.1:{backend_port}}}
""")
    # Byte-compiled, as an installed balancer runs (pip compiles at install): compiling the
    # sources at start-up, where PYTHONDONTWRITEBYTECODE is set, would leave ~3.5 MiB of the
    # compiler's garbage in the start-up figure.
    subprocess.run([python, "-m", "compileall", "-q", str(ROOT / "balancer")], check=True)
    procs = [subprocess.Popen([python, str(work / "backend.py"), str(backend_port)])]
    try:
        wait_port(backend_port)
        procs.append(subprocess.Popen([python, "-m", "balancer", "--log-level", "warning", "run",
                                       "--config", str(work / "lb.yaml")], cwd=ROOT))
        wait_port(lb_port)
        balancer = procs[1].pid
        baseline = rss_mib(balancer)
        started = time.monotonic()
        writers = uvloop.run(hold(lb_port, args.count, balancer, admin_port, baseline, started))
        del writers
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
    return 0


async def hold(lb_port: int, count: int, balancer: int, admin_port: int, baseline: float,
               started: float) -> None:
    writers = await open_many(lb_port, count)
    opened = time.monotonic() - started
    await asyncio.sleep(2)  # let buffers settle
    after = rss_mib(balancer)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read().decode()
    gauge = re.search(r'^balancer_backend_websockets\{[^}]*\} (\S+)$', metrics, re.M)
    per_socket_kib = (after - baseline) * 1024 / count
    print(f"idle WebSockets held: {count} (balancer reports {gauge.group(1) if gauge else '?'}), "
          f"opened in {opened:.1f}s")
    print(f"balancer RSS: {baseline:.1f} MiB before, {after:.1f} MiB after "
          f"({per_socket_kib:.1f} KiB per WebSocket)")
    projected = baseline + per_socket_kib * 10_000 / 1024
    print(f"per WebSocket: {per_socket_kib:.1f} KiB "
          f"(target <= {PER_SOCKET_TARGET_KIB} KiB: {'met' if per_socket_kib <= PER_SOCKET_TARGET_KIB else 'NOT met'})")
    print(f"projected for 10,000: {projected:.1f} MiB RSS "
          f"(target <= {TOTAL_TARGET_MIB} MiB: {'met' if projected <= TOTAL_TARGET_MIB else 'NOT met'})")
    for writer in writers:
        writer.close()


if __name__ == "__main__":
    raise SystemExit(main())
