#!/usr/bin/env python3
"""Side-by-side throughput/latency benchmark: balancer vs HAProxy vs direct-to-backend.

`make bench` runs this file. It starts, on loopback ports chosen at run time:

- two nginx backends (1 worker each, tiny ``ok`` response, ``X-Backend: a|b`` header),
- HAProxy 1 thread (``balance leastconn``, ``http-reuse always``) in front of them,
- the balancer (``python -m balancer run --config FILE``) once per selected variant,
- for the TLS variants, HAProxy doing the same TLS work in the same run: ``haproxy-tls``
  (HTTPS listener) for ``tls``, ``haproxy-tls-up`` (TLS to two more nginx backends serving
  HTTPS, verified) for ``tls-upstream``, with certificates made by the ``openssl`` command,

then drives each target with ``wrk -t1 -c64 --latency``, interleaving the targets round by
round (the machine is shared and noisy), and reports medians and *same-run* ratios against
HAProxy and direct. See benchmarks/README.md for the method.

Only the standard library is needed (PyYAML is used for prettier configs when present).
Every process started here is stopped on exit, on Ctrl-C and on exceptions; every load run is
bounded by wrk's own ``-d`` plus a hard timeout.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as _dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
OUT_DIR_DEFAULT = REPO / "benchmarks" / "out"

# Issue targets, as ratios to HAProxy measured in the same run (issue 19, and issue 16's TLS).
# variant -> (min throughput ratio, max p99 ratio or None)
TARGETS: dict[str, tuple[float, float | None]] = {
    "spine": (0.90, 1.20),
    "full": (0.80, None),
    "full-new": (0.70, None),
    "plugins": (0.75, None),
    "tls": (0.70, None),  # against haproxy-tls
    "tls-upstream": (0.60, None),  # against haproxy-tls-up
}

# Two workers against one. On a 2-core machine that also runs wrk and the backends, what
# scaling can show is that a second worker adds no CPU per request (issue 19): the proxy's
# CPU per request with `workers: 2` at most this many times the one worker's, same-round pairs.
# The throughput ratio is reported beside it, with the bound the CPU figures put on it.
TWO_WORKERS, ONE_WORKER, MAX_TWO_VS_ONE_CPU = "workers2", "spine", 1.10
# Targets against another variant of the same run (not against HAProxy):
# variant -> (the variant it is compared with, min throughput ratio).
RELATIVE_TARGETS: dict[str, tuple[str, float]] = {
    "full+log": ("full", 0.90),  # issue 14: the access log costs at most a tenth
}

STICKY_COOKIE = "LB_BENCH"
STICKY_SECRET = "bench-secret-not-for-production-0123456789"
PLUGIN_HEADER = "X-Bench-Plugins"
COUNTRY_HEADER = "CF-IPCountry"


# --------------------------------------------------------------------------- processes


class Processes:
    """Owns every child process; stops them all (process group first TERM, then KILL)."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], *, log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        logf = open(log, "wb")
        try:
            proc = subprocess.Popen(
                argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=cwd, start_new_session=True,  # own process group: workers die too
            )
        finally:
            logf.close()
        self._procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        # Kill whatever is left in the group (e.g. a worker that outlived its master).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self._procs)):
            self.stop(proc)


PROCS = Processes()


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------- CPU accounting

CLK_TCK = os.sysconf("SC_CLK_TCK")
CPU_PARTS = ("proxy", "backends", "wrk")


def proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds so far) for every process: utime + stime from /proc/<pid>/stat,
    which already covers all of a process's threads."""
    table: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:  # exited while we looked
            continue
        # Field 2 (comm) may hold spaces and ')': count fields from after the last ')'.
        rest = data[data.rindex(b")") + 2:].split()
        table[int(name)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK)
    return table


def tree_cpu(table: dict[int, tuple[int, float]], roots: tuple[int, ...]) -> float:
    """CPU seconds of the roots and all their descendants (forked workers, nginx workers)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo.extend(children.get(pid, ()))
    return total


def trees_cpu(trees: dict[str, tuple[int, ...]]) -> dict[str, float]:
    table = proc_table()  # one scan for all trees: the snapshots are taken at one moment
    return {part: tree_cpu(table, roots) for part, roots in trees.items()}


def wait_reaping(proc: subprocess.Popen[bytes], timeout: float, busy_for: float) -> float:
    """proc.wait(timeout) that returns the CPU seconds the child used, from wait4's rusage
    (exact, all threads). Polls slowly for the first `busy_for` seconds (the child's expected
    run time), then every 2 ms so that the reaping, and the snapshots after it, follow the
    child's exit closely."""
    start = time.monotonic()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
            return usage.ru_utime + usage.ru_stime
        elapsed = time.monotonic() - start
        if elapsed >= timeout:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        time.sleep(0.05 if elapsed < busy_for - 0.1 else 0.002)


# --------------------------------------------------------------------------- setup helpers


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        cand = Path(d) / name
        if cand.exists() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def ensure_tools() -> dict[str, str]:
    """haproxy, nginx and wrk; installs them with apt-get when one is missing."""
    names = ("haproxy", "nginx", "wrk")
    tools = {n: find_tool(n) for n in names}
    missing = [n for n, p in tools.items() if not p]
    if missing:
        log(f"missing {', '.join(missing)}: installing haproxy nginx-light wrk with apt-get")
        prefix: list[str] = []
        if os.geteuid() != 0:
            if not shutil.which("sudo"):
                raise SystemExit(f"need {missing} and not root (no sudo): install them by hand")
            prefix = ["sudo", "-n"]
        # RUNLEVEL=1 keeps invoke-rc.d from starting the packaged services on port 80.
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", RUNLEVEL="1")
        install = prefix + ["apt-get", "install", "-y", "-q", "haproxy", "nginx-light", "wrk"]
        if subprocess.run(install, env=env).returncode != 0:
            log("apt-get install failed: running apt-get update and retrying")
            subprocess.run(prefix + ["apt-get", "update", "-q"], env=env, check=False)
            subprocess.run(install, env=env, check=True)
        tools = {n: find_tool(n) for n in names}
        still = [n for n, p in tools.items() if not p]
        if still:
            raise SystemExit(f"still missing after install: {', '.join(still)}")
    return {n: str(p) for n, p in tools.items()}


def tool_version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (r.stdout + r.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        time.sleep(0.1)
    return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def http_get(port: int, path: str = "/", headers: dict[str, str] | None = None,
             timeout: float = 5.0, scheme: str = "http") -> Response:
    if scheme == "https":  # the bench CA is throwaway: the probe checks answers, not identities
        import ssl

        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=timeout, context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": "bench.local", **(headers or {})})
        r = conn.getresponse()
        return Response(r.status, r.getheaders(), r.read())
    finally:
        conn.close()


# --------------------------------------------------------------------------- backends / haproxy

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /health {{ return 200 "ok\\n"; }}
        location / {{
            add_header X-Backend {name} always;
            default_type text/plain;
            return 200 "ok\\n";
        }}
    }}
}}
"""

HAPROXY_CFG = """\
global
    nbthread 1
    maxconn 4096
{global_tls}
defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 60s

frontend bench
    bind 127.0.0.1:{port}{bind_tls}
    default_backend nginx

backend nginx
    balance leastconn
{servers}
"""
# With TLS on either side, the same floor the balancer keeps (TLS 1.2 and newer).
HAPROXY_TLS_GLOBAL = """\
    ssl-default-bind-options ssl-min-ver TLSv1.2
    ssl-default-server-options ssl-min-ver TLSv1.2
"""


def haproxy_config(port: int, backends: dict[str, int], listener_pem: Path | None = None,
                   backend_ca: Path | None = None, alpn: str = "http/1.1") -> str:
    """HAProxy's config in front of `backends`: plain, or with an HTTPS listener
    (`listener_pem`) and/or verified TLS to the backends (`backend_ca`)."""
    server_tls = (f" ssl verify required ca-file {backend_ca} sni str({SERVER_NAME})"
                  if backend_ca is not None else "")
    servers = "\n".join(f"    server {n} 127.0.0.1:{p}{server_tls}" for n, p in backends.items())
    bind_tls = f" ssl crt {listener_pem} alpn {alpn}" if listener_pem is not None else ""
    tls = listener_pem is not None or backend_ca is not None
    return HAPROXY_CFG.format(port=port, servers=servers, bind_tls=bind_tls,
                              global_tls=HAPROXY_TLS_GLOBAL if tls else "")


@dataclass
class Pki:
    ca: Path
    cert: Path  # leaf chain
    key: Path
    pem: Path  # leaf + key in one file (HAProxy's crt)


# The name the bench's certificates are issued for (listener and TLS backends).
SERVER_NAME = "bench.local"
NGINX_TLS = """\
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:bench:1m;
"""


def make_pki(work: Path) -> Pki:
    d = work / "pki"
    d.mkdir()
    d.chmod(0o755)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*argv: str) -> None:
        r = subprocess.run(["openssl", *argv], capture_output=True, text=True, cwd=d, timeout=30)
        if r.returncode != 0:
            raise SystemExit(f"openssl {' '.join(argv[:2])} failed: {r.stderr[-500:]}")

    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=bench CA")
    openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", f"/CN={SERVER_NAME}")
    (d / "san.ext").write_text(f"subjectAltName=DNS:{SERVER_NAME},IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "san.ext")
    pem = d / "haproxy.pem"
    pem.write_bytes((d / "leaf.pem").read_bytes() + (d / "leaf.key").read_bytes())
    for f in d.iterdir():
        f.chmod(0o644)  # nginx workers may run as another user
    return Pki(ca=d / "ca.pem", cert=d / "leaf.pem", key=d / "leaf.key", pem=pem)


def start_nginx(tools: dict[str, str], work: Path, name: str,
                pki: Pki | None = None) -> tuple[int, subprocess.Popen[bytes]]:
    """An nginx backend answering `ok` with X-Backend: `name`; HTTPS with `pki`."""
    d = work / f"nginx-{name}"
    d.mkdir()
    d.chmod(0o755)
    port = free_port()
    conf = d / "nginx.conf"
    text = NGINX_CONF.format(dir=d, port=port, name=name[-1])
    if pki is not None:
        text = text.replace(" backlog=4096;\n", " backlog=4096 ssl;\n"
                            + NGINX_TLS.format(cert=pki.cert, key=pki.key))
    conf.write_text(text)
    proc = PROCS.start(f"nginx-{name}", [tools["nginx"], "-p", str(d), "-c", str(conf)],
                       log=d / "stdout.log")
    if not wait_for_port(port, proc, 10):
        raise SystemExit(f"nginx backend {name} did not start:\n{tail(d / 'stdout.log')}\n"
                         f"{tail(d / 'error.log')}")
    return port, proc


def start_haproxy(tools: dict[str, str], work: Path, backends: dict[str, int], name: str = "haproxy",
                  listener_pem: Path | None = None, backend_ca: Path | None = None,
                  alpn: str = "http/1.1") -> tuple[int, subprocess.Popen[bytes]]:
    """HAProxy in front of `backends`; with `listener_pem` an HTTPS listener, with
    `backend_ca` TLS to the backends, verified against it under SERVER_NAME."""
    d = work / name
    d.mkdir()
    port = free_port()
    cfg = d / "haproxy.cfg"
    cfg.write_text(haproxy_config(port, backends, listener_pem, backend_ca, alpn))
    proc = PROCS.start(name, [tools["haproxy"], "-db", "-f", str(cfg)], log=d / "stdout.log")
    if not wait_for_port(port, proc, 10):
        raise SystemExit(f"{name} did not start:\n{tail(d / 'stdout.log')}")
    return port, proc


# --------------------------------------------------------------------------- h2 (HTTP/2 over TLS)

# Issue 17: h2load over TLS, several streams per connection, against HAProxy with h2 on its bind.
H2_VARIANT, H2_TARGET = "h2", 0.50

def parse_h2load(output: str) -> dict[str, Any]:
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored, (\d+) timeout", output)
    rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", output)
    if not done or not rps:
        raise ValueError(f"unexpected h2load output: {output[-500:]}")
    return {"rps": float(rps.group(1)), "succeeded": int(done.group(3)),
            "errors": int(done.group(4)) + int(done.group(5)) + int(done.group(6)),
            "protocol_h2": "Application protocol: h2" in output}


def run_h2(args: argparse.Namespace, tools: dict[str, str], work: Path, backends: dict[str, int],
           python: str) -> dict[str, Any]:
    """h2load -c16 -m10 over TLS against HAProxy (h2 bind) and the balancer (h2 by ALPN)."""
    h2load = find_tool("h2load")
    if h2load is None:
        return {"status": "skipped: h2load not installed (nghttp2-client)"}
    d = work / "h2"
    d.mkdir()
    pki = make_pki(d)
    hport, hproc = start_haproxy(tools, d, backends, name="haproxy-h2", listener_pem=pki.pem, alpn="h2,http/1.1")
    lport, admin = free_port(), free_port()
    bcfg = _base_config(Ports(lport, admin, backends))
    bcfg["listeners"][0]["tls"] = {"certificate": str(pki.cert), "key": str(pki.key)}
    cfg_path = d / "balancer.yaml"
    cfg_path.write_text(dump_config(bcfg))
    balancer = PROCS.start("balancer-h2", [python, "-m", "balancer", "run", "--config", str(cfg_path)],
                           log=d / "balancer.log", cwd=REPO)
    if not wait_for_port(lport, balancer, args.startup_timeout):
        return {"status": f"failed: balancer did not start: {tail(d / 'balancer.log')}"}
    targets = {"haproxy": hport, "balancer": lport}
    pids = {"haproxy": (hproc.pid,), "balancer": (balancer.pid,)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    argv = [h2load, "-c", "16", "-m", "10", "-t", "1", "-D", f"{args.duration:g}",
            "--warm-up-time", "1"]
    for rnd in range(args.rounds):
        order = list(targets) if rnd % 2 == 0 else list(reversed(targets))
        for name in order:
            log(f"h2 round {rnd + 1}/{args.rounds}: {name} {args.duration:g}s")
            before = tree_cpu(proc_table(), pids[name])
            out = subprocess.run(argv + [f"https://127.0.0.1:{targets[name]}/"], capture_output=True,
                                 text=True, timeout=args.duration + 60)
            used = tree_cpu(proc_table(), pids[name]) - before
            (d / f"round{rnd + 1}-{name}.txt").write_text(out.stdout + out.stderr)
            try:
                res = parse_h2load(out.stdout)
            except ValueError as exc:
                return {"status": f"failed: {exc}"}
            # The proxy's CPU over the warm-up second and the measured run, per request at the
            # measured rate over both (h2load reports no count for its warm-up).
            res["proxy_cpu_us_per_request"] = used / (res["rps"] * (args.duration + 1)) * 1e6 if res["rps"] else None
            runs[name].append(res)
            log(f"  {fmt_rps(res['rps'])} req/s, errors {res['errors']}, h2: {res['protocol_h2']}, "
                f"proxy CPU {res['proxy_cpu_us_per_request'] or 0:.1f} us/request")
    ratios = [b["rps"] / h["rps"] for b, h in zip(runs["balancer"], runs["haproxy"]) if h["rps"]]
    ratio = statistics.median(ratios) if ratios else None
    result = {"status": "ok", "load": " ".join(argv[1:]), "runs": runs,
              "median_rps": {n: statistics.median(r["rps"] for r in rs) for n, rs in runs.items()},
              "ratio_vs_haproxy": ratio, "target": H2_TARGET,
              "met": ratio is not None and ratio >= H2_TARGET}
    print(f"\nh2: h2load {' '.join(argv[1:])} over TLS, {args.rounds} round(s), medians")
    for name, rps in result["median_rps"].items():
        cpu = [r["proxy_cpu_us_per_request"] for r in runs[name] if r["proxy_cpu_us_per_request"]]
        print(f"  {name:<9} {fmt_rps(rps):>10} req/s, proxy CPU "
              f"{statistics.median(cpu) if cpu else 0:.1f} us/request")
    print(f"  balancer / haproxy: {fmt_ratio(ratio)} (target >= {H2_TARGET:.2f}x)"
          f" {'met' if result['met'] else 'NOT met'}")
    return result


# --------------------------------------------------------------------------- balancer variants


@dataclass
class Ports:
    listener: int
    admin: int
    backends: dict[str, int]
    pki: Pki | None = None
    tls_backends: dict[str, int] = field(default_factory=dict)  # nginx serving HTTPS


def _base_config(p: Ports, *, workers: int = 1) -> dict[str, Any]:
    return {
        "listeners": [{"name": "bench", "address": f"127.0.0.1:{p.listener}"}],
        "admin": {"address": f"127.0.0.1:{p.admin}"},
        "workers": workers,
        "shutdown_timeout": "2s",
        "routes": [{"name": "all", "match": {"path_prefix": "/"}, "pool": "web"}],
        "pools": {
            "web": {
                "balance": "least_conn",
                "backends": [{"id": n, "address": f"127.0.0.1:{port}"}
                             for n, port in p.backends.items()],
            }
        },
    }


def config_spine(p: Ports) -> dict[str, Any]:
    return _base_config(p)


def config_workers2(p: Ports) -> dict[str, Any]:
    return _base_config(p, workers=2)


def config_full(p: Ports) -> dict[str, Any]:
    cfg = _base_config(p)
    cfg["trusted_proxies"] = ["127.0.0.0/8"]
    cfg["geo"] = {
        "country_header": COUNTRY_HEADER,
        "regions": {"eu-west": ["DE", "GB", "NL"], "na-east": ["US", "CA"]},
        "fallback": {"eu-west": ["na-east"], "na-east": ["eu-west"]},
        "default_region": "eu-west",
    }
    pool = cfg["pools"]["web"]
    pool["geo"] = True
    pool["sticky"] = {"cookie": STICKY_COOKIE, "ttl": "8h", "secret_env": "STICKY_SECRET",
                      "on_failure": "rebalance"}
    for b in pool["backends"]:
        b["region"] = "eu-west"
    return cfg


def config_full_log(p: Ports) -> dict[str, Any]:
    cfg = config_full(p)
    # A file beside the generated config (relative paths resolve against the config's folder).
    cfg["access_log"] = {"path": "access.log"}
    return cfg


def config_tls(p: Ports) -> dict[str, Any]:
    """spine behind an HTTPS listener (keep-alive: wrk's connections stay open)."""
    assert p.pki is not None
    cfg = _base_config(p)
    cfg["listeners"][0]["tls"] = {"certificate": str(p.pki.cert), "key": str(p.pki.key)}
    return cfg


def config_tls_upstream(p: Ports) -> dict[str, Any]:
    """spine with verified TLS to nginx backends serving HTTPS."""
    assert p.pki is not None
    cfg = _base_config(p)
    pool = cfg["pools"]["web"]
    pool["backends"] = [{"id": n[-1], "address": f"127.0.0.1:{port}"}
                        for n, port in p.tls_backends.items()]
    pool["tls"] = {"ca": str(p.pki.ca), "server_name": SERVER_NAME}
    return cfg


def config_plugins(p: Ports) -> dict[str, Any]:
    cfg = _base_config(p)
    cfg["routes"][0]["plugins"] = [
        {"request_id": {"header": "X-Request-Id"}},
        {"ip_filter": {"allow": ["127.0.0.0/8"]}},
        # Never empties during a run: measures the bucket bookkeeping, not 429s.
        {"rate_limit": {"rate": "10000000/s", "burst": 10000000, "key": "client_ip"}},
        {"headers": {"response": {"set": {PLUGIN_HEADER: "on"}}}},
    ]
    return cfg


class ProbeError(Exception):
    """The balancer answered, but not as this variant needs (a feature is missing)."""


def _probe_basic(port: int, headers: dict[str, str] | None = None, scheme: str = "http") -> Response:
    r = http_get(port, "/", headers, scheme=scheme)
    backend = r.header("X-Backend")
    if r.status != 200 or backend not in ("a", "b"):
        raise ProbeError(f"GET / answered {r.status} with X-Backend={backend!r}, "
                         f"body {r.body[:200]!r}")
    return r


def probe_spine(port: int, admin: int) -> dict[str, str]:
    _probe_basic(port)
    return {}


def probe_full(port: int, admin: int) -> dict[str, str]:
    """Returns the extra wrk headers: a real sticky cookie and a trusted country header."""
    r = _probe_basic(port, {COUNTRY_HEADER: "DE"})
    cookie = None
    for sc in r.all("Set-Cookie"):
        name, _, rest = sc.partition("=")
        if name.strip() == STICKY_COOKIE:
            cookie = f"{STICKY_COOKIE}={rest.split(';', 1)[0]}"
    if cookie is None:
        raise ProbeError(f"no {STICKY_COOKIE} sticky cookie issued (sticky not implemented?)")
    first = r.header("X-Backend")
    for _ in range(4):
        again = _probe_basic(port, {COUNTRY_HEADER: "DE", "Cookie": cookie})
        if again.header("X-Backend") != first:
            raise ProbeError("sticky cookie not honoured: backend changed")
    try:
        m = http_get(admin, "/metrics")
    except OSError as exc:
        raise ProbeError(f"admin /metrics unreachable: {exc}") from exc
    if m.status != 200 or b"balancer_requests_total" not in m.body:
        raise ProbeError(f"admin /metrics answered {m.status} without balancer_requests_total")
    return {COUNTRY_HEADER: "DE", "Cookie": cookie}


def probe_full_new(port: int, admin: int) -> dict[str, str]:
    """Returns the extra wrk headers: the country header only, so that every request is a new
    player and every answer issues a sticky cookie (checked here)."""
    r = _probe_basic(port, {COUNTRY_HEADER: "DE"})
    if not any(sc.partition("=")[0].strip() == STICKY_COOKIE for sc in r.all("Set-Cookie")):
        raise ProbeError(f"no {STICKY_COOKIE} sticky cookie issued to a new player")
    return {COUNTRY_HEADER: "DE"}


def probe_full_log(port: int, admin: int) -> dict[str, str]:
    """probe_full, and the access log must count the probe's lines as written."""
    headers = probe_full(port, admin)
    deadline = time.monotonic() + 5
    while True:
        m = http_get(admin, "/metrics")
        found = re.search(rb"^balancer_access_log_lines_total (\S+)$", m.body, re.M)
        if found and float(found.group(1)) > 0:
            return headers
        if time.monotonic() > deadline:
            raise ProbeError("no access-log line written (access_log not implemented?)")
        time.sleep(0.1)


def probe_https(port: int, admin: int) -> dict[str, str]:
    _probe_basic(port, scheme="https")
    return {}


def probe_plugins(port: int, admin: int) -> dict[str, str]:
    r = _probe_basic(port)
    if r.header(PLUGIN_HEADER) != "on":
        raise ProbeError(f"headers plugin did not set {PLUGIN_HEADER} (plugins not implemented?)")
    return {}


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    config: Callable[[Ports], dict[str, Any]]
    probe: Callable[[int, int], dict[str, str]]  # -> extra request headers for wrk
    env: dict[str, str] = field(default_factory=dict)
    baseline: str = "haproxy"  # the HAProxy target doing the same work, for the ratios
    scheme: str = "http"  # what wrk speaks to it


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("spine", "least_conn, no sticky/geo/plugins, 1 worker", config_spine, probe_spine),
        Variant("full", "least_conn + signed sticky cookie + geo (trusted CF-IPCountry) + metrics, "
                "1 worker", config_full, probe_full, {"STICKY_SECRET": STICKY_SECRET}),
        Variant("full-new", "full, but every request a new player: no cookie sent, every answer "
                "issues one", config_full, probe_full_new, {"STICKY_SECRET": STICKY_SECRET}),
        Variant("full+log", "full + access_log (JSON lines) to a file", config_full_log,
                probe_full_log, {"STICKY_SECRET": STICKY_SECRET}),
        Variant("plugins", "spine + request_id, ip_filter, rate_limit (never empties), headers "
                "plugins on the route", config_plugins, probe_plugins),
        Variant("workers2", "spine with workers: 2 (SO_REUSEPORT)", config_workers2, probe_spine),
        Variant("tls", "spine behind an HTTPS listener (TLS 1.3, ECDSA P-256), keep-alive",
                config_tls, probe_https, baseline="haproxy-tls", scheme="https"),
        Variant("tls-upstream", "spine with verified TLS to nginx backends serving HTTPS",
                config_tls_upstream, probe_spine, baseline="haproxy-tls-up"),
    )
}
TLS_BASELINES = {"haproxy-tls": "HAProxy nbthread 1, leastconn, HTTPS listener",
                 "haproxy-tls-up": "HAProxy nbthread 1, leastconn, verified TLS to nginx HTTPS backends"}


def dump_config(cfg: dict[str, Any]) -> str:
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:  # JSON is valid YAML
        return json.dumps(cfg, indent=2) + "\n"
    return yaml.safe_dump(cfg, sort_keys=False)


@dataclass
class Target:
    name: str
    kind: str  # direct | haproxy | balancer
    port: int
    headers: dict[str, str] = field(default_factory=dict)
    description: str = ""
    scheme: str = "http"
    baseline: str = "haproxy"  # balancer targets: the HAProxy target their ratios are against
    status: str = "ok"  # ok | failed: ... | skipped: ...
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    admin: int | None = None
    cpu_root: int | None = None  # the process whose tree is the proxy's CPU (none for direct)
    runs: list[dict[str, Any]] = field(default_factory=list)
    metrics_after: dict[str, Any] | None = None
    log_tail: str | None = None


def start_balancer(variant: Variant, python: str, work: Path, backends: dict[str, int],
                   startup_timeout: float, pki: Pki | None = None,
                   tls_backends: dict[str, int] | None = None) -> Target:
    d = work / f"balancer-{variant.name}"
    d.mkdir()
    ports = Ports(free_port(), free_port(), backends, pki, tls_backends or {})
    cfg_path = d / "config.yaml"
    cfg_path.write_text(dump_config(variant.config(ports)))
    target = Target(variant.name, "balancer", ports.listener, description=variant.description,
                    log=d / "balancer.log", admin=ports.admin, scheme=variant.scheme,
                    baseline=variant.baseline)
    env = dict(os.environ, **variant.env)
    env.pop("BALANCER_ADMIN_TOKEN", None)
    env["PYTHONUNBUFFERED"] = "1"
    argv = [python, "-m", "balancer", "run", "--config", str(cfg_path)]
    proc = PROCS.start(f"balancer-{variant.name}", argv, log=target.log, env=env, cwd=REPO)
    target.proc = proc
    target.cpu_root = proc.pid
    if not wait_for_port(ports.listener, proc, startup_timeout):
        code = proc.poll()
        if code == 2:  # `balancer run` exits 2 on a config it rejects (README.md, "Commands")
            why = "config rejected, exit 2: a key or plugin this build does not know yet?"
        elif code is not None:
            why = f"exited with {code}"
        else:
            why = f"not listening after {startup_timeout:.0f}s"
        target.status = f"failed: balancer did not start ({why})"
        target.log_tail = tail(target.log, 40)
        detail = tail(target.log, 4)
        if detail:
            target.status += "\n      " + detail.replace("\n", "\n      ")
        PROCS.stop(proc)
        return target
    # The listener may accept before the pools are wired: retry the probe briefly.
    deadline = time.monotonic() + 5
    while True:
        try:
            target.headers = variant.probe(ports.listener, ports.admin)
            break
        except (ProbeError, OSError, http.client.HTTPException) as exc:
            if time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.3)
                continue
            kind = "skipped: feature missing" if isinstance(exc, ProbeError) else "failed: probe"
            target.status = f"{kind}: {exc}"
            PROCS.stop(proc)
            return target
    return target


# --------------------------------------------------------------------------- wrk

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """wrk latency like '835.21us', '1.53ms', '2.00s', '1.02m' -> seconds."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*(us|ms|s|m|h)\s*", text)
    if not m:
        raise ValueError(f"bad wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    rps = re.search(r"^Requests/sec:\s*([0-9.]+)", output, re.M)
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+([0-9.]+\s*(?:us|ms|s|m|h))\s*$", output, re.M)
    p50 = re.search(r"^\s*50(?:\.0+)?%\s+([0-9.]+\s*(?:us|ms|s|m|h))\s*$", output, re.M)
    total = re.search(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h)", output, re.M)
    if not rps or not p99:
        raise ValueError("could not parse wrk output:\n" + output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = dict(zip(("connect", "read", "write", "timeout"),
                             map(int, sock.groups()))) if sock else {}
    return {
        "rps": float(rps.group(1)),
        "p99_s": parse_duration(p99.group(1)),
        "p50_s": parse_duration(p50.group(1)) if p50 else None,
        "requests": int(total.group(1)) if total else None,
        "socket_errors": socket_errors,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": sum(socket_errors.values()) + (int(non2xx.group(1)) if non2xx else 0),
    }


def run_wrk(wrk: str, target: Target, *, duration: float, threads: int, connections: int,
            log_path: Path, cpu_trees: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """One wrk run. With `cpu_trees` (part -> root pids), also the CPU each part, and wrk
    itself, used during the run, per completed request (see cpu_per_request)."""
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency",
            "--timeout", "2s"]
    for k, v in target.headers.items():
        argv += ["-H", f"{k}: {v}"]
    argv.append(f"{target.scheme}://127.0.0.1:{target.port}/")
    before = trees_cpu(cpu_trees) if cpu_trees is not None else {}
    started = time.monotonic()
    proc = PROCS.start("wrk", argv, log=log_path)
    try:
        # wrk stops itself at -d; this is the hard bound
        wrk_cpu = wait_reaping(proc, timeout=duration + 30, busy_for=duration)
    except subprocess.TimeoutExpired:
        PROCS.stop(proc)
        raise RuntimeError(f"wrk against {target.name} did not finish in {duration + 30:g}s")
    after = trees_cpu(cpu_trees) if cpu_trees is not None else {}
    wall = time.monotonic() - started
    PROCS.stop(proc)
    out = log_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {out[-500:]}")
    res = parse_wrk(out)
    if cpu_trees is not None:
        used: dict[str, float | None] = {part: after[part] - before[part] for part in cpu_trees}
        used["wrk"] = wrk_cpu
        res["wall_s"] = wall
        res["cpu_seconds"] = used
        res["cpu_us_per_request"] = cpu_per_request(used, res["requests"] or res["rps"] * duration)
    return res


def cpu_per_request(used: dict[str, float | None], requests: float) -> dict[str, float | None]:
    """CPU seconds per part -> microseconds per completed request; a part that is not there
    (the proxy, for direct) is None and adds nothing to the total."""
    per = {part: (None if used.get(part) is None or not requests else used[part] * 1e6 / requests)
           for part in CPU_PARTS}
    per["total"] = sum(v for v in per.values() if v is not None)
    return per


# --------------------------------------------------------------------------- report


def fmt_rps(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def fmt_lat(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 1e-3:
        return f"{v * 1e6:.0f}us"
    if v < 1:
        return f"{v * 1e3:.2f}ms"
    return f"{v:.2f}s"


def fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def cpu_medians(t: Target) -> dict[str, float | None]:
    """Median over rounds of each part's CPU us per request (each part on its own)."""
    per_run = [r["cpu_us_per_request"] for r in t.runs if "cpu_us_per_request" in r]
    out: dict[str, float | None] = {}
    for part in (*CPU_PARTS, "total"):
        vals = [c[part] for c in per_run if c[part] is not None]
        out[part] = statistics.median(vals) if vals else None
    return out


def summarize(t: Target) -> dict[str, Any]:
    if not t.runs:
        return {"rps": None, "p99_s": None, "errors": None}
    return {
        "rps": statistics.median(r["rps"] for r in t.runs),
        "p99_s": statistics.median(r["p99_s"] for r in t.runs),
        "errors": sum(r["errors"] for r in t.runs),
        "non_2xx": sum(r["non_2xx"] for r in t.runs),
        "socket_errors": {k: sum(r["socket_errors"].get(k, 0) for r in t.runs)
                          for k in ("connect", "read", "write", "timeout")},
        "cpu_us_per_request": cpu_medians(t),
    }


def paired_ratio(a: Target, b: Target | None, key: str | Callable[[dict[str, Any]], Any]) -> float | None:
    """Median over rounds of a/b, each pair measured in the same round (adjacent in time).
    `key` names a run's figure, or reads it from the run."""
    if b is None or not a.runs or not b.runs:
        return None
    value = key if callable(key) else (lambda run: run.get(key))
    # Pair by round number: a round one side failed in is left out, never mis-paired.
    other = {r["round"]: r for r in b.runs}
    pairs = []
    for ra in a.runs:
        rb = other.get(ra["round"])
        if rb is None:
            continue
        mine, theirs = value(ra), value(rb)
        if mine is not None and theirs:
            pairs.append(mine / theirs)
    return statistics.median(pairs) if pairs else None


def proxy_cpu(run: dict[str, Any]) -> float | None:
    """The proxy's CPU us per request in one run (None where it was not measured)."""
    return run.get("cpu_us_per_request", {}).get("proxy")


def evaluate_two_workers(by_name: dict[str, Target]) -> dict[str, Any]:
    """workers2's target: its proxy CPU per request against one worker's, same-round pairs."""
    key = f"cpu_vs_{ONE_WORKER}"
    want = f"<={MAX_TWO_VS_ONE_CPU:.2f}x {ONE_WORKER} CPU/request"
    one = by_name.get(ONE_WORKER)
    if one is None:
        return {"met": None, "text": f"not evaluated ({want}; {ONE_WORKER} not run)", key: None}
    ratio = paired_ratio(by_name[TWO_WORKERS], one, proxy_cpu)
    thr = paired_ratio(by_name[TWO_WORKERS], one, "rps")
    if ratio is None:
        return {"met": False, "text": f"NOT MET ({want}; not measured)", key: None,
                f"vs_{ONE_WORKER}": thr}
    ok = ratio <= MAX_TWO_VS_ONE_CPU
    return {"met": ok, "text": f"{ratio:.2f}x {ONE_WORKER} CPU: {'met' if ok else 'NOT MET'} ({want})",
            key: ratio, f"vs_{ONE_WORKER}": thr}


def evaluate(name: str, thr: float | None, p99: float | None) -> tuple[bool | None, str]:
    if name not in TARGETS:
        return None, "no target"
    min_thr, max_p99 = TARGETS[name]
    want = f">={min_thr:.2f}x thr" + (f", <={max_p99:.2f}x p99" if max_p99 else "")
    if thr is None:
        return False, f"NOT MET ({want}; not measured)"
    ok = thr >= min_thr and (max_p99 is None or (p99 is not None and p99 <= max_p99))
    return ok, f"{'met' if ok else 'NOT MET'} ({want})"


def evaluate_relative(name: str, by_name: dict[str, Target]) -> dict[str, Any]:
    """A target against another variant (RELATIVE_TARGETS): throughput, same-round pairs."""
    other_name, minimum = RELATIVE_TARGETS[name]
    key = f"vs_{other_name}"
    want = f">={minimum:.2f}x {other_name} thr"
    other = by_name.get(other_name)
    if other is None:
        return {"met": None, "text": f"not evaluated ({want}; {other_name} not run)", key: None}
    ratio = paired_ratio(by_name[name], other, "rps")
    if ratio is None:
        return {"met": False, "text": f"NOT MET ({want}; not measured)", key: None}
    ok = ratio >= minimum
    return {"met": ok, "text": f"{ratio:.2f}x {other_name}: {'met' if ok else 'NOT MET'} ({want})",
            key: ratio}


def issue_target(t: Target, by_name: dict[str, Target], thr_h: float | None,
                 p99_h: float | None) -> dict[str, Any]:
    if t.name == TWO_WORKERS:
        return evaluate_two_workers(by_name)
    if t.name in RELATIVE_TARGETS:
        return evaluate_relative(t.name, by_name)
    ok, text = evaluate(t.name, thr_h, p99_h)
    return {"met": ok, "text": text}


def print_table(targets: list[Target], by_name: dict[str, Target], max_errors: int) -> dict[str, Any]:
    direct = by_name.get("direct")
    header = (f"{'target':<14} {'req/s':>9} {'p99':>9} {'errors':>7}  {'thr/haproxy':>11} "
              f"{'p99/haproxy':>11} {'thr/direct':>10}  issue target")
    print()
    print(header)
    print("-" * (len(header) + 10))
    evaluations: dict[str, Any] = {}
    for t in targets:
        s = summarize(t)
        if t.status != "ok" or not t.runs:
            print(f"{t.name:<14} {'-':>9} {'-':>9} {'-':>7}  {t.status}")
            if t.kind == "balancer":
                evaluations[t.name] = issue_target(t, by_name, None, None)
            continue
        err = s["errors"]
        err_txt = f"{err}" + ("!" if err > max_errors else "")
        if t.kind == "balancer":
            hap = by_name.get(t.baseline)
            thr_h = paired_ratio(t, hap, "rps")
            p99_h = paired_ratio(t, hap, "p99_s")
            thr_d = paired_ratio(t, direct, "rps")
            ev = issue_target(t, by_name, thr_h, p99_h)
            if t.baseline != "haproxy":
                ev = {**ev, "text": f"{ev['text']} vs {t.baseline}"}
            evaluations[t.name] = {**ev, "thr_vs_haproxy": thr_h, "p99_vs_haproxy": p99_h,
                                   "thr_vs_direct": thr_d, "haproxy_target": t.baseline}
            print(f"{t.name:<14} {fmt_rps(s['rps']):>9} {fmt_lat(s['p99_s']):>9} {err_txt:>7}  "
                  f"{fmt_ratio(thr_h):>11} {fmt_ratio(p99_h):>11} {fmt_ratio(thr_d):>10}  "
                  f"{ev['text']}")
        else:
            thr_d = paired_ratio(t, direct, "rps") if t is not direct else None
            print(f"{t.name:<14} {fmt_rps(s['rps']):>9} {fmt_lat(s['p99_s']):>9} {err_txt:>7}  "
                  f"{'':>11} {'':>11} {fmt_ratio(thr_d):>10}")
    noisy = [t.name for t in targets if t.runs and summarize(t)["errors"] > max_errors]
    if noisy:
        print(f"\n! errors (non-2xx + socket errors) above --max-errors={max_errors}: "
              f"{', '.join(noisy)}; those numbers are not trustworthy")
    print()
    return evaluations


def fmt_us(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def print_cpu_table(targets: list[Target]) -> None:
    """Where the CPU goes: per completed request, so runs at different rates compare."""
    ran = [t for t in targets if any("cpu_us_per_request" in r for r in t.runs)]
    if not ran:
        return
    print("CPU per request (us, medians over rounds)")
    header = f"{'target':<14} {'proxy':>8} {'backends':>8} {'wrk':>8} {'total':>8}"
    print(header)
    print("-" * len(header))
    for t in ran:
        m = cpu_medians(t)
        print(f"{t.name:<14} {fmt_us(m['proxy']):>8} {fmt_us(m['backends']):>8} "
              f"{fmt_us(m['wrk']):>8} {fmt_us(m['total']):>8}")
    print()


def two_worker_bound(one: Target) -> dict[str, Any] | None:
    """The most two workers can gain over one, from the one-worker runs' CPU per request.

    One worker is the bottleneck, so its throughput is about 1/B (B: proxy CPU per request),
    if it keeps its core busy. With two workers every core can be busy, so throughput is at
    most cores/(B + O) (O: backends + wrk CPU per request): the ratio is at most
    cores * B / (B + O)."""
    runs = [r for r in one.runs if "cpu_us_per_request" in r]
    if not runs:
        return None
    b = statistics.median(r["cpu_us_per_request"]["proxy"] for r in runs)
    o = statistics.median(r["cpu_us_per_request"]["backends"] + r["cpu_us_per_request"]["wrk"]
                          for r in runs)
    busy = statistics.median(r["cpu_seconds"]["proxy"] / r["wall_s"] for r in runs)
    cores = os.cpu_count() or 1
    return {"cores": cores, "proxy_us": b, "backends_wrk_us": o,
            "max_vs_one_worker": cores * b / (b + o), "one_worker_cores_busy": busy}


# wrk straight to nginx does the same work every round: when its req/s spreads by more than
# this between rounds, the host (other VMs on it) took the time, and the run's ratios say more
# about that than about the proxies.
STEADY_HOST_SPREAD = 0.10


def print_host_steadiness(by_name: dict[str, Target]) -> dict[str, Any] | None:
    """Warns when `direct` varied between rounds more than STEADY_HOST_SPREAD; returns the spread."""
    direct = by_name.get("direct")
    rates = [r["rps"] for r in direct.runs] if direct is not None else []
    if len(rates) < 2 or min(rates) <= 0:
        return None
    spread = max(rates) / min(rates) - 1
    steady = spread <= STEADY_HOST_SPREAD
    line = (f"host: direct ranged {fmt_rps(min(rates))}-{fmt_rps(max(rates))} req/s over the rounds "
            f"({spread:.0%})")
    if steady:
        print(f"{line}: steady")
    else:
        print(f"{line}: NOT STEADY (> {STEADY_HOST_SPREAD:.0%}): something outside this run took "
              f"the cores; its ratios are not evidence, run again on a quiet host")
    return {"direct_rps_min": min(rates), "direct_rps_max": max(rates), "spread": spread,
            "steady": steady}


def print_two_workers(by_name: dict[str, Target], evaluations: dict[str, Any]) -> dict[str, Any] | None:
    """The two-workers line and the CPU bound that explains it; returns the bound for the JSON."""
    two, one = by_name.get(TWO_WORKERS), by_name.get(ONE_WORKER)
    if two is None or one is None:
        return None
    ev = evaluations.get(TWO_WORKERS, {})
    print(f"{TWO_WORKERS} / {ONE_WORKER}: throughput {fmt_ratio(ev.get(f'vs_{ONE_WORKER}'))}, "
          f"proxy CPU per request {fmt_ratio(ev.get(f'cpu_vs_{ONE_WORKER}'))} (same-round pairs, "
          f"median; target CPU <= {MAX_TWO_VS_ONE_CPU:.2f}x)")
    bound = two_worker_bound(one)
    if bound is not None:
        print(f"bound from CPU per request: two workers can reach at most "
              f"{bound['max_vs_one_worker']:.2f}x of one worker on {bound['cores']} cores "
              f"(proxy {bound['proxy_us']:.1f} us, backends+wrk {bound['backends_wrk_us']:.1f} us "
              f"per request in the {ONE_WORKER} runs, where the one worker kept "
              f"{bound['one_worker_cores_busy']:.2f} of a core busy)")
    print()
    return bound


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Benchmark the balancer side by side with HAProxy and direct-to-backend.")
    ap.add_argument("--variants", default="all",
                    help="comma-separated balancer variants: "
                    f"{', '.join(VARIANTS)}; 'all' (default) tries every one and reports those "
                    "whose features are missing as skipped; 'none' runs only direct and haproxy")
    ap.add_argument("--duration", type=float, default=8, help="seconds per wrk run (default 8)")
    # Three rounds, not two: the median of two is their mean, so one noisy 10-second window
    # on this shared machine moved a same-round ratio by 5 %; the median of three drops it.
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds; medians are reported (default 3)")
    ap.add_argument("--warmup", type=float, default=2, help="warm-up seconds per target (default 2)")
    ap.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    ap.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    ap.add_argument("--max-errors", type=int, default=10,
                    help="errors per target (summed over rounds) tolerated before flagging (default 10)")
    ap.add_argument("--python", default=None,
                    help="interpreter for the balancer (default: .venv/bin/python of the repo)")
    ap.add_argument("--startup-timeout", type=float, default=20,
                    help="seconds a balancer may take to listen (default 20)")
    ap.add_argument("--out", type=Path, default=OUT_DIR_DEFAULT,
                    help="directory for results-<variant>.json (default benchmarks/out)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep configs and logs (prints the path)")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 when a selected variant fails or misses its issue target")
    ap.add_argument("--list", action="store_true", help="list variants and exit")
    args = ap.parse_args(argv)
    v = args.variants.strip().lower()
    args.h2 = v == "all"
    if v == "all":
        args.variant_names = list(VARIANTS)
    elif v in ("none", ""):
        args.variant_names = []
    else:
        args.variant_names = [x.strip() for x in v.split(",") if x.strip()]
        args.h2 = H2_VARIANT in args.variant_names
        args.variant_names = [x for x in args.variant_names if x != H2_VARIANT]
        unknown = [x for x in args.variant_names if x not in VARIANTS]
        if unknown:
            ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if args.duration <= 0 or args.rounds < 1:
        ap.error("--duration must be > 0 and --rounds >= 1")
    return args


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for v in VARIANTS.values():
            tgt = TARGETS.get(v.name)
            tt = (f" [target >= {tgt[0]:.2f}x HAProxy thr" + (f", p99 <= {tgt[1]:.2f}x" if tgt[1] else "")
                  + "]") if tgt else ""
            if v.name in RELATIVE_TARGETS:
                other, minimum = RELATIVE_TARGETS[v.name]
                tt = f" [target >= {minimum:.2f}x {other} thr]"
            if v.name == TWO_WORKERS:
                tt = f" [target proxy CPU/request <= {MAX_TWO_VS_ONE_CPU:.2f}x {ONE_WORKER}]"
            print(f"{v.name:<9} {v.description}{tt}")
        print(f"{H2_VARIANT:<9} h2load over TLS (-c16 -m10) vs HAProxy with h2 on its bind "
              f"[target >= {H2_TARGET:.2f}x HAProxy thr]")
        return 0

    # Explicit: a shell starting us in the background would leave SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(PROCS.stop_all)

    tools = ensure_tools()
    python = args.python or (str(REPO / ".venv" / "bin" / "python")
                             if (REPO / ".venv" / "bin" / "python").exists() else sys.executable)
    work = Path(tempfile.mkdtemp(prefix="balancer-bench-"))
    work.chmod(0o755)  # nginx workers may run as another user
    started = _dt.datetime.now(_dt.timezone.utc)
    try:
        log(f"work dir {work}")
        backends = {}
        nginx_pids: list[int] = []
        for name in ("a", "b"):
            backends[name], nginx = start_nginx(tools, work, name)
            nginx_pids.append(nginx.pid)
        log(f"nginx backends a={backends['a']} b={backends['b']}")
        hport, haproxy = start_haproxy(tools, work, backends)
        log(f"haproxy on {hport}")

        targets: list[Target] = [
            Target("direct", "direct", backends["a"], description="wrk -> nginx a"),
            Target("haproxy", "haproxy", hport, description="HAProxy nbthread 1, leastconn",
                   cpu_root=haproxy.pid),
        ]
        # The TLS variants' HAProxy twins (and HTTPS backends), only when one is selected.
        baselines = {VARIANTS[n].baseline for n in args.variant_names} & set(TLS_BASELINES)
        pki = make_pki(work) if baselines else None
        tls_backends: dict[str, int] = {}
        if pki is not None and "haproxy-tls-up" in baselines:
            for name in ("ta", "tb"):
                tls_backends[name], nginx = start_nginx(tools, work, name, pki)
                nginx_pids.append(nginx.pid)
            log(f"nginx HTTPS backends a={tls_backends['ta']} b={tls_backends['tb']}")
        for name in sorted(baselines):
            assert pki is not None
            if name == "haproxy-tls":
                port, proc = start_haproxy(tools, work, backends, name, listener_pem=pki.pem)
            else:
                port, proc = start_haproxy(tools, work, tls_backends, name, backend_ca=pki.ca)
            log(f"{name} on {port}")
            targets.append(Target(name, "haproxy", port, description=TLS_BASELINES[name],
                                  cpu_root=proc.pid, scheme="https" if name == "haproxy-tls" else "http"))
        for t in targets:  # sanity: everything answers 200 with the backend header
            try:
                _probe_basic(t.port, scheme=t.scheme)
            except (ProbeError, OSError, http.client.HTTPException) as exc:
                raise SystemExit(f"{t.name} does not answer as expected: {exc}")

        for name in args.variant_names:
            log(f"starting balancer variant {name}")
            t = start_balancer(VARIANTS[name], python, work, backends, args.startup_timeout,
                               pki, tls_backends)
            log(f"  {name}: {t.status.splitlines()[0]}" + (f" on {t.port}" if t.status == "ok" else ""))
            targets.append(t)

        live = [t for t in targets if t.status == "ok"]
        logs = work / "wrk"
        logs.mkdir()
        if args.warmup > 0:
            for t in live:
                log(f"warm-up {t.name} {args.warmup:g}s")
                try:
                    run_wrk(tools["wrk"], t, duration=args.warmup, threads=args.threads,
                            connections=args.connections, log_path=logs / f"warmup-{t.name}.txt")
                except (RuntimeError, ValueError) as exc:
                    t.status = f"failed: warm-up: {str(exc)[:300]}"
            live = [t for t in live if t.status == "ok"]

        for rnd in range(args.rounds):
            # Rotate the order each round so no target always runs first/last.
            order = live[rnd % len(live):] + live[: rnd % len(live)] if live else []
            for t in order:
                if t.status != "ok":
                    continue
                if t.proc is not None and t.proc.poll() is not None:
                    t.status = f"failed: balancer exited ({t.proc.returncode}) during the run"
                    continue
                log(f"round {rnd + 1}/{args.rounds}: {t.name} {args.duration:g}s")
                # Both nginx trees count as backends, also for direct (b idles there).
                trees = {"backends": tuple(nginx_pids)}
                if t.cpu_root is not None:
                    trees["proxy"] = (t.cpu_root,)
                try:
                    res = run_wrk(tools["wrk"], t, duration=args.duration, threads=args.threads,
                                  connections=args.connections,
                                  log_path=logs / f"round{rnd + 1}-{t.name}.txt", cpu_trees=trees)
                except (RuntimeError, ValueError) as exc:
                    t.status = f"failed: {str(exc)[:300]}"
                    continue
                res["round"] = rnd + 1
                t.runs.append(res)
                cpu = res["cpu_us_per_request"]
                log(f"  {fmt_rps(res['rps'])} req/s, p99 {fmt_lat(res['p99_s'])}, "
                    f"errors {res['errors']}, CPU {cpu['total']:.1f} us/request")
            time.sleep(0.5)

        # After the load, scrape /metrics once: a sanity check that the admin side survived.
        for t in targets:
            if t.kind == "balancer" and t.status == "ok" and t.admin:
                try:
                    m = http_get(t.admin, "/metrics")
                    t.metrics_after = {"status": m.status, "bytes": len(m.body),
                                       "has_requests_total": b"balancer_requests_total" in m.body}
                except (OSError, http.client.HTTPException) as exc:
                    t.metrics_after = {"error": str(exc)}

        by_name = {t.name: t for t in targets}
        print(f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency, "
              f"{args.rounds} interleaved round(s), medians; ratios are medians of same-round "
              f"pairs; {os.cpu_count()} cores")
        evaluations = print_table(targets, by_name, args.max_errors)
        print_cpu_table(targets)
        bound = print_two_workers(by_name, evaluations)
        host = print_host_steadiness(by_name)
        h2_result = run_h2(args, tools, work, backends, python) if args.h2 else None

        env_info = {
            "started": started.isoformat(timespec="seconds"),
            "commit": git_commit(),
            "cpus": os.cpu_count(),
            "loadavg_before": os.getloadavg(),
            "host_steadiness": host,
            "python": platform.python_version(),
            "haproxy": tool_version([tools["haproxy"], "-v"]),
            "nginx": tool_version([tools["nginx"], "-v"]),
            "wrk": tool_version([tools["wrk"], "-v"]),
        }
        method = {"duration_s": args.duration, "rounds": args.rounds, "warmup_s": args.warmup,
                  "threads": args.threads, "connections": args.connections,
                  "ratio": "median over rounds of same-round pairs; tls against haproxy-tls, "
                           "tls-upstream against haproxy-tls-up",
                  "cpu": "utime+stime during each measured run: proxy = the target's process "
                         "tree, backends = both nginx trees, wrk = wait4 rusage; "
                         "us per completed request"}

        def target_json(t: Target) -> dict[str, Any]:
            return {"name": t.name, "kind": t.kind, "description": t.description,
                    "status": t.status, "median": summarize(t), "runs": t.runs,
                    "metrics_after": t.metrics_after, "log_tail": t.log_tail,
                    "headers": {k: ("<cookie>" if k == "Cookie" else v) for k, v in t.headers.items()}}

        args.out.mkdir(parents=True, exist_ok=True)
        if h2_result is not None:
            (args.out / "results-h2.json").write_text(json.dumps(
                {"variant": H2_VARIANT, "env": env_info, **h2_result}, indent=2) + "\n")
        baseline_json = [target_json(by_name["direct"]), target_json(by_name["haproxy"])]
        written = []
        names = args.variant_names or ["baselines"]
        for name in names:
            doc: dict[str, Any] = {"variant": name, "env": env_info, "method": method,
                                   "targets": list(baseline_json)}
            twin = VARIANTS[name].baseline if name in VARIANTS else "haproxy"
            if twin != "haproxy" and twin in by_name:
                doc["targets"].append(target_json(by_name[twin]))
            if name in by_name:
                doc["targets"].append(target_json(by_name[name]))
                doc["ratios"] = evaluations.get(name)
                if name in TARGETS:
                    doc["issue_target"] = {"min_thr_vs_haproxy": TARGETS[name][0],
                                           "max_p99_vs_haproxy": TARGETS[name][1]}
                if name in RELATIVE_TARGETS:
                    other, minimum = RELATIVE_TARGETS[name]
                    doc["issue_target"] = {f"min_thr_vs_{other}": minimum}
                if name == TWO_WORKERS:
                    doc["issue_target"] = {f"max_proxy_cpu_vs_{ONE_WORKER}": MAX_TWO_VS_ONE_CPU}
                    doc["cpu_bound"] = bound
            path = args.out / f"results-{name}.json"
            path.write_text(json.dumps(doc, indent=2) + "\n")
            written.append(str(path.relative_to(REPO) if path.is_relative_to(REPO) else path))
        print("results: " + ", ".join(written))

        if args.strict:
            bad = [n for n in args.variant_names
                   if by_name[n].status != "ok" or evaluations.get(n, {}).get("met") is False]
            if bad:
                print(f"strict: failed or below target: {', '.join(bad)}")
                return 1
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        PROCS.stop_all()
        if args.keep_tmp:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
