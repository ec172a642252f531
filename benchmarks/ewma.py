#!/usr/bin/env python3
"""balance: ewma against least_conn: two backends, one 20 ms slower than the other.

Starts, on loopback ports chosen at run time, two aiohttp backends (the fast one answers after
`--fast-ms`, the slow one `--extra-ms` later) and the balancer (`python -m balancer run`) once
per strategy, then sends GET / from `C` players at once (each waits for its answer before its
next request: a closed loop, as game clients behave) for `--duration` seconds, for each C in
`--concurrency`. It prints, per strategy and C, the share of requests the slow backend got and
the latency players saw (p50, p99). See benchmarks/README.md for the figures and what they mean.

    .venv/bin/python benchmarks/ewma.py                       # defaults below
    .venv/bin/python benchmarks/ewma.py --duration 5 --concurrency 1,4

Every process started here is stopped on exit; every load run stops by itself after
`--duration`. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from run import PROCS, REPO, free_port, wait_for_port

SLOW, FAST = "slow", "fast"


# --------------------------------------------------------------------------- the backends


def serve_backend(port: int, delay: float, name: str) -> None:
    """`--backend`: one aiohttp backend that answers every request after `delay` seconds."""
    import uvloop
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(text="ok\n", headers={"X-Backend": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# --------------------------------------------------------------------------- the players


async def one_player(port: int, until: float, latencies: list[float], shares: dict[str, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    try:
        while time.monotonic() < until:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            backend = "?"
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-backend":
                    backend = value.strip().decode()
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            shares[backend] = shares.get(backend, 0) + 1
    finally:
        writer.close()


async def load(port: int, players: int, duration: float) -> dict:
    latencies: list[float] = []
    shares: dict[str, int] = {}
    until = time.monotonic() + duration
    await asyncio.gather(*(one_player(port, until, latencies, shares) for _ in range(players)))
    latencies.sort()
    total = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(total - 1, int(p * total))] * 1000

    return {"requests": total, "rps": total / duration, "slow_share": shares.get(SLOW, 0) / total,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "shares": shares}


# --------------------------------------------------------------------------- the balancer


def balancer_config(port: int, admin: int, backends: dict[str, int], balance: str) -> str:
    lines = [
        "listeners:", f"  - {{name: public, address: '127.0.0.1:{port}'}}",
        "admin:", f"  address: '127.0.0.1:{admin}'",
        "routes:", "  - {name: all, pool: games}",
        "pools:", "  games:", f"    balance: {balance}", "    backends:",
    ]
    lines += [f"      - {{id: {name}, address: '127.0.0.1:{p}'}}" for name, p in backends.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", nargs=3, metavar=("PORT", "DELAY_S", "NAME"), help=argparse.SUPPRESS)
    parser.add_argument("--strategies", default="least_conn,ewma")
    parser.add_argument("--concurrency", default="1,4,16", help="players at once, comma-separated")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--fast-ms", type=float, default=1.0, help="the fast backend's answer time")
    parser.add_argument("--extra-ms", type=float, default=20.0, help="how much slower the slow one is")
    parser.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out"))
    args = parser.parse_args()
    if args.backend:
        serve_backend(int(args.backend[0]), float(args.backend[1]), args.backend[2])
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="bench-ewma-"))
    try:
        return measure(args, work)
    finally:
        PROCS.stop_all()


def measure(args: argparse.Namespace, work: Path) -> int:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    delays = {FAST: args.fast_ms / 1000, SLOW: (args.fast_ms + args.extra_ms) / 1000}
    backends: dict[str, int] = {}
    for name, delay in delays.items():
        port = free_port()
        proc = PROCS.start(name, [args.python, __file__, "--backend", str(port), str(delay), name],
                           log=work / f"{name}.log")
        if not wait_for_port(port, proc, 20):
            print(f"backend {name} did not start; see {work / (name + '.log')}", file=sys.stderr)
            return 1
        backends[name] = port
    results = []
    for balance in args.strategies.split(","):
        port, admin = free_port(), free_port()
        config = work / f"{balance}.yaml"
        config.write_text(balancer_config(port, admin, backends, balance))
        proc = PROCS.start(balance, [args.python, "-m", "balancer", "run", "--config", str(config)],
                           log=work / f"{balance}.log", cwd=REPO)
        if not wait_for_port(port, proc, 30):
            print(f"balancer ({balance}) did not start; see {work / (balance + '.log')}", file=sys.stderr)
            return 1
        asyncio.run(load(port, 4, 1.0))  # warm-up: imports, keep-alive connections, first estimates
        for players in [int(c) for c in args.concurrency.split(",")]:
            row = {"balance": balance, "players": players, **asyncio.run(load(port, players, args.duration))}
            results.append(row)
            print(f"{balance:>10}  {players:>3} players  {row['requests']:>6} requests  "
                  f"slow share {row['slow_share']:6.1%}  p50 {row['p50_ms']:6.2f} ms  "
                  f"p99 {row['p99_ms']:6.2f} ms  {row['rps']:7.0f} req/s", flush=True)
        PROCS.stop(proc)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results-ewma.json").write_text(json.dumps(
        {"fast_ms": args.fast_ms, "extra_ms": args.extra_ms, "duration": args.duration,
         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
