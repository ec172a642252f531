"""The access log through the real balancer: one line per request and per WebSocket, with the
fields and the `outcome` docs/configuration.md lists, written off the event loop.

Each test sends its own X-Request-Id and finds its line by it, as an operator would.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import sys
import tempfile
import textwrap
from pathlib import Path

import aiohttp

from tests.conftest import Running, metric_samples, one_pool, pool_yaml
from tests.fakes.backends import free_port
from tests.fakes.rawhttp import read_head

ROOT = Path(__file__).resolve().parents[2]
FIELDS = [
    "time", "request_id", "client_ip", "country", "region", "listener", "tls", "method", "host",
    "path", "query", "protocol", "status", "bytes_in", "bytes_out", "duration_ms",
    "upstream_connect_ms", "upstream_wait_ms", "route", "pool", "backend", "tries", "sticky",
    "outcome", "user_agent",
]
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
GEO = ("\n        trusted_proxies: [127.0.0.0/8]"
       "\n        geo: {regions: {eu-west: [DE], eu-south: [IT]}, pinned_countries: [IT], blocked_countries: [FR]}")


def log_top(path: Path, extra: str = "") -> str:
    return f"access_log: {{path: '{path}'{extra}}}"


def read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def line_for(running: Running, path: Path, request_id: str) -> dict:
    """The line of `request_id`, once written (an exchange ends when the player's connection
    does, which may come a moment after the answer was read)."""
    for _ in range(200):
        await running.app.access_log.flush()
        found = [line for line in read_lines(path) if line["request_id"] == request_id]
        if found:
            assert len(found) == 1
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no access-log line for {request_id}: {read_lines(path)}")


async def get(http: aiohttp.ClientSession, url: str, request_id: str, **headers: str) -> int:
    async with http.get(url, headers={"X-Request-Id": request_id, **headers}) as resp:
        await resp.read()
        return resp.status


async def test_a_proxied_request_is_one_json_line_with_every_field_and_no_secret(
        start_balancer, backends, http, tmp_path):
    [b] = await backends(1)
    log = tmp_path / "access.log"
    lb = await start_balancer(one_pool([b], top=log_top(log)))
    async with http.get(lb.url + "/lobby?table=7&seat=2", headers={
            "X-Request-Id": "bet-1", "User-Agent": "slot-client/2", "Cookie": "LB_GAME=cookie-secret",
            "Authorization": "Bearer token-secret"}) as resp:
        body = await resp.read()
        assert resp.status == 200
    line = await line_for(lb, log, "bet-1")
    assert list(line) == FIELDS
    assert RFC3339_MS.match(line["time"])
    assert line | {"time": None, "duration_ms": None, "upstream_connect_ms": None,
                   "upstream_wait_ms": None, "bytes_in": None, "bytes_out": None} == {
        "time": None, "request_id": "bet-1", "client_ip": "127.0.0.1", "country": None,
        "region": None, "listener": "public", "tls": None, "method": "GET", "host": "127.0.0.1",
        "path": "/lobby", "query": "table=7&seat=2", "protocol": "HTTP/1.1", "status": 200,
        "bytes_in": None, "bytes_out": None, "duration_ms": None, "upstream_connect_ms": None,
        "upstream_wait_ms": None, "route": "all", "pool": "web", "backend": b.name, "tries": 1,
        "sticky": "none", "outcome": "ok", "user_agent": "slot-client/2",
    }
    assert line["bytes_out"] > len(body)  # the head and the body
    assert line["bytes_in"] > len("GET /lobby?table=7&seat=2 HTTP/1.1\r\n")
    assert 0 <= line["upstream_connect_ms"] <= line["duration_ms"]
    assert 0 <= line["upstream_wait_ms"] <= line["duration_ms"]
    text = log.read_text()
    assert "secret" not in text and "Bearer" not in text
    async with http.get(lb.admin_url + "/metrics") as resp:
        samples = metric_samples(await resp.text())
    assert samples[("balancer_access_log_lines_total", frozenset())] == 1
    assert samples[("balancer_access_log_dropped_total", frozenset())] == 0


async def test_a_retry_shows_two_tries_and_the_backend_that_answered(start_balancer, backends, http, tmp_path):
    [live] = await backends(1)
    dead = f"{{id: dead, address: '127.0.0.1:{free_port()}'}}"
    log = tmp_path / "access.log"
    lb = await start_balancer(f"""
        {log_top(log)}
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            balance: round_robin
            backends: [{dead}, {pool_yaml([live])[1:-1]}]
        """)
    assert await get(http, lb.url + "/", "retry-1") == 200  # round robin starts with `dead`
    line = await line_for(lb, log, "retry-1")
    assert (line["status"], line["tries"], line["backend"], line["outcome"]) == (200, 2, live.name, "ok")


async def test_a_blocked_country_is_logged_as_geo_blocked(start_balancer, backends, http, tmp_path):
    [b] = await backends(("de-1", "eu-west"))
    log = tmp_path / "access.log"
    lb = await start_balancer(one_pool([b], top=log_top(log) + GEO))
    assert await get(http, lb.url + "/", "fr-1", **{"CF-IPCountry": "FR"}) == 451
    line = await line_for(lb, log, "fr-1")
    assert (line["status"], line["country"], line["outcome"], line["backend"]) == (451, "FR", "geo_blocked", None)


async def test_a_pinned_player_without_a_backend_in_their_region(start_balancer, backends, http, tmp_path):
    [b] = await backends(("de-1", "eu-west"))
    log = tmp_path / "access.log"
    lb = await start_balancer(one_pool([b], pool_extra="geo: true", top=log_top(log) + GEO))
    assert await get(http, lb.url + "/", "it-1", **{"CF-IPCountry": "IT"}) == 503
    assert await get(http, lb.url + "/", "de-1", **{"CF-IPCountry": "DE"}) == 200
    it = await line_for(lb, log, "it-1")
    assert (it["status"], it["country"], it["region"], it["outcome"], it["pool"], it["backend"]) == (
        503, "IT", "eu-south", "pinned_unavailable", "web", None)
    de = await line_for(lb, log, "de-1")
    assert (de["country"], de["region"], de["backend"], de["outcome"]) == ("DE", "eu-west", "de-1", "ok")


async def test_a_rate_limited_request(start_balancer, backends, http, tmp_path):
    [b] = await backends(1)
    log = tmp_path / "access.log"
    lb = await start_balancer(f"""
        {log_top(log)}
        routes:
          - name: games
            pool: web
            plugins: [{{rate_limit: {{rate: 1/m, burst: 1, key: client_ip}}}}]
        pools:
          web:
            backends: {pool_yaml([b])}
        """)
    assert await get(http, lb.url + "/", "first") == 200
    assert await get(http, lb.url + "/", "second") == 429
    line = await line_for(lb, log, "second")
    assert (line["status"], line["route"], line["outcome"], line["backend"]) == (429, "games", "rate_limited", None)


async def test_a_backend_reset_and_a_backend_timeout(start_balancer, backends, http, tmp_path):
    reset, slow = await backends("reset-1", "slow-1")
    reset.mode, slow.mode = "reset", "hang"
    log = tmp_path / "access.log"
    lb = await start_balancer(f"""
        {log_top(log)}
        routes:
          - {{name: reset, pool: reset, match: {{path_prefix: /reset}}}}
          - {{name: slow, pool: slow}}
        pools:
          reset:
            backends: {pool_yaml([reset])}
          slow:
            timeouts: {{response: 300ms}}
            backends: {pool_yaml([slow])}
        """)
    assert await get(http, lb.url + "/reset", "reset-1") == 502
    assert await get(http, lb.url + "/slow", "slow-1") == 504
    line = await line_for(lb, log, "reset-1")
    assert (line["status"], line["backend"], line["outcome"], line["upstream_wait_ms"]) == (
        502, "reset-1", "upstream_reset", None)
    line = await line_for(lb, log, "slow-1")
    assert (line["status"], line["backend"], line["outcome"]) == (504, "slow-1", "upstream_timeout")
    # The line's duration spans the 300 ms the balancer waited. The timer runs on the event
    # loop's clock, which libuv reads once per loop turn (in whole milliseconds), so it may
    # fire a turn before perf_counter says 300 ms passed: on a busy machine a few ms early.
    assert line["duration_ms"] >= 250


async def test_a_player_who_leaves_mid_response(start_balancer, backends, tmp_path):
    [b] = await backends(1)
    log = tmp_path / "access.log"
    lb = await start_balancer(one_pool([b], top=log_top(log)))
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port())
    writer.write(b"GET /stream/200000000 HTTP/1.1\r\nHost: casino\r\nX-Request-Id: gone-1\r\n\r\n")
    head = await read_head(reader)
    assert head.status == 200
    writer.transport.abort()  # the player closes the tab
    line = await line_for(lb, log, "gone-1")
    assert (line["status"], line["outcome"], line["backend"]) == (200, "client_closed", b.name)
    assert 0 < line["bytes_out"] < 200_000_000


async def test_a_websocket_is_logged_at_its_close_with_bytes_both_ways(start_balancer, backends, http, tmp_path):
    [b] = await backends(1)
    log = tmp_path / "access.log"
    lb = await start_balancer(one_pool([b], top=log_top(log)))
    async with http.ws_connect(lb.url + "/ws/table-9", headers={"X-Request-Id": "ws-1",
                                                               "User-Agent": "live-roulette"}) as ws:
        for _ in range(3):
            await ws.send_str("x" * 1000)
            assert (await ws.receive_str()).endswith("x" * 1000)
        await lb.app.access_log.flush()
        assert "ws-1" not in log.read_text()  # still open: logged when it closes
    line = await line_for(lb, log, "ws-1")
    assert (line["status"], line["path"], line["outcome"], line["user_agent"]) == (
        101, "/ws/table-9", "websocket_closed", "live-roulette")
    assert line["bytes_in"] > 3000 and line["bytes_out"] > 3000
    assert line["duration_ms"] > 0


async def test_sticky_new_then_hit(start_balancer, backends, http, tmp_path, monkeypatch):
    monkeypatch.setenv("STICKY_SECRET", "s3cret")
    bs = await backends(2)
    log = tmp_path / "access.log"
    lb = await start_balancer(one_pool(bs, top=log_top(log),
                                       pool_extra="sticky: {cookie: LB_GAME, secret_env: STICKY_SECRET}"))
    async with http.get(lb.url + "/", headers={"X-Request-Id": "s-1"}) as resp:
        cookie = resp.cookies["LB_GAME"].value
    assert await get(http, lb.url + "/", "s-2", Cookie=f"LB_GAME={cookie}") == 200
    assert (await line_for(lb, log, "s-1"))["sticky"] == "new"
    assert (await line_for(lb, log, "s-2"))["sticky"] == "hit"
    assert cookie not in log.read_text()


async def test_sampling_and_min_duration_keep_errors_and_own_answers(start_balancer, backends, http, tmp_path):
    ok, failing = await backends("ok-1", "failing-1")
    failing.mode = "error500"
    for extra in (", sample: 0", ", min_duration: 1h"):
        log = tmp_path / f"access{len(extra)}.log"
        lb = await start_balancer(f"""
            {log_top(log, extra)}
            routes:
              - {{name: failing, pool: failing, match: {{path_prefix: /failing}}}}
              - {{name: ok, pool: ok}}
            pools:
              ok:
                backends: {pool_yaml([ok])}
              failing:
                retries: {{attempts: 1}}
                backends: {pool_yaml([failing])}
            """)
        for i in range(5):
            assert await get(http, lb.url + "/", f"ok-{i}") == 200
        assert await get(http, lb.url + "/failing", "failing") == 500  # the backend's 5xx
        bad = await lb.raw(b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n")  # the balancer's own answer
        assert bad.startswith(b"HTTP/1.1 400")
        await line_for(lb, log, "failing")
        await lb.app.access_log.flush()
        lines = read_lines(log)
        assert [(line["status"], line["outcome"]) for line in lines] == [(500, "ok"), (400, "bad_request")]


async def test_combined_format_and_truncated_client_ip(start_balancer, backends, http, tmp_path):
    [b] = await backends(1)
    log = tmp_path / "access.log"
    lb = await start_balancer(one_pool([b], top=log_top(log, ", format: combined, client_ip: truncated")))
    assert await get(http, lb.url + "/bet?amount=5", "c-1", **{"User-Agent": 'say "hi"',
                                                                "Referer": "https://casino.example/"}) == 200
    await lb.app.access_log.flush()
    [line] = log.read_text().splitlines()
    assert re.fullmatch(
        r'127\.0\.0\.0 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /bet\?amount=5 HTTP/1\.1" 200 \d+ '
        rf'"https://casino\.example/" "say \\x22hi\\x22" c-1 {b.name}', line), line


async def test_a_reload_may_move_or_turn_off_the_access_log(start_balancer, backends, http, tmp_path):
    [b] = await backends(1)
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    lb = await start_balancer(one_pool([b], top=log_top(first)))
    assert await get(http, lb.url + "/", "before") == 200
    assert await lb.reload_with(one_pool([b], top=log_top(second))) == []
    assert await get(http, lb.url + "/", "after") == 200
    await line_for(lb, second, "after")
    # The old file's writer writes what was queued to it before it stops, in its own time.
    assert [line["request_id"] for line in await lines_in(first, 1)] == ["before"]
    assert await lb.reload_with(one_pool([b])) == []
    assert await get(http, lb.url + "/", "off") == 200
    await lb.app.access_log.flush()
    assert [line["request_id"] for line in read_lines(second)] == ["after"]


async def test_a_sink_that_blocks_drops_lines_and_counts_them_while_players_are_served(
        start_balancer, backends, http, tmp_path):
    """A FIFO whose reader never reads: the writer thread blocks in write(), as on a stuck disk."""
    [b] = await backends(1)
    fifo = tmp_path / "stuck.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        lb = await start_balancer(one_pool([b], top=log_top(fifo)))
        long_path = "/" + "p" * 1000
        statuses: list[int] = []

        async def player(n: int) -> None:
            for i in range(n):
                statuses.append(await get(http, lb.url + long_path, f"blocked-{i}", **{"User-Agent": "u" * 250}))

        await asyncio.gather(*(player(40) for _ in range(32)))
        assert statuses == [200] * 1280
        async with http.get(lb.admin_url + "/metrics") as resp:
            samples = metric_samples(await resp.text())
        dropped = samples[("balancer_access_log_dropped_total", frozenset())]
        written = samples[("balancer_access_log_lines_total", frozenset())]
        assert dropped > 0
        assert written + dropped <= 1280
    finally:
        os.close(reader)  # the blocked write fails now, and the writer thread ends at shutdown


# -- the real process: signals, workers, the balancer's own log as JSON -------------------------


async def start_process(config: Path) -> tuple[asyncio.subprocess.Process, int, list[str]]:
    """`balancer run` as an operator starts it; returns it with its port once it is ready."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "balancer", "run", "--config", str(config),
        cwd=ROOT, stderr=asyncio.subprocess.PIPE)
    lines: list[str] = []
    port = 0
    assert proc.stderr is not None
    # With workers, the control process's "ready" may come before a worker's listener line
    # (separate processes writing to one pipe): wait for both.
    while not port or not any("balancer ready" in line for line in lines):
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        assert line, "balancer exited early:\n" + "".join(lines)
        lines.append(line)
        if m := re.search(r"listener public on [\d.]+:(\d+)", line):
            port = int(m.group(1))
    return proc, port, lines


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def lines_in(path: Path, want: int) -> list[dict]:
    """The file's lines once it has `want` of them (a process writes in batches)."""
    for _ in range(200):
        lines = read_lines(path)
        if len(lines) >= want:
            return lines
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path}: {len(read_lines(path))} lines, not {want}")


def process_config(tmp_path: Path, b, log: Path, extra: str = "") -> Path:
    config = tmp_path / "balancer.yaml"
    config.write_text(textwrap.dedent(f"""
        listeners:
          - {{name: public, address: 127.0.0.1:0}}
        admin: {{address: 127.0.0.1:0}}
        {log_top(log)}
        {extra}
        routes:
          - {{name: all, pool: web}}
        pools:
          web:
            backends: {pool_yaml([b])}
        """))
    return config


async def test_sigusr1_reopens_the_file_after_logrotate_renamed_it(backends, http, tmp_path):
    """Also: `log_format: json` makes the balancer's own log JSON lines too."""
    [b] = await backends(1)
    log = tmp_path / "access.log"
    proc, port, own_log = await start_process(process_config(tmp_path, b, log, "log_format: json"))
    try:
        own = [json.loads(line) for line in own_log]
        assert any(line["message"].startswith("balancer ready") and line["level"] == "info"
                   and RFC3339_MS.match(line["time"]) for line in own)
        url = f"http://127.0.0.1:{port}/"
        assert await get(http, url, "before-rotate") == 200
        await lines_in(log, 1)
        rotated = tmp_path / "access.log.1"
        log.rename(rotated)  # logrotate's rename, then its postrotate: kill -USR1
        proc.send_signal(signal.SIGUSR1)
        sent = []
        for i in range(200):  # until a line lands in the new file (the signal is asynchronous)
            sent.append(f"after-rotate-{i}")
            assert await get(http, url, sent[-1]) == 200
            if log.exists() and log.read_text():
                break
            await asyncio.sleep(0.05)
        await stop_process(proc)  # writes what is left
        old_ids = [line["request_id"] for line in read_lines(rotated)]
        new_ids = [line["request_id"] for line in read_lines(log)]
        assert old_ids[0] == "before-rotate"
        assert new_ids and old_ids + new_ids == ["before-rotate", *sent]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_two_workers_write_whole_lines_to_one_file(backends, tmp_path):
    [b] = await backends(1)
    log = tmp_path / "access.log"
    proc, port, _ = await start_process(process_config(tmp_path, b, log, "workers: 2"))
    try:
        url = f"http://127.0.0.1:{port}/" + "p" * 900
        ids = [f"w-{i}" for i in range(400)]

        async def player(chunk: list[str]) -> None:
            for request_id in chunk:
                # A fresh connection each time, so the kernel spreads players over both workers.
                async with aiohttp.ClientSession() as session:
                    assert await get(session, url, request_id, **{"User-Agent": "u" * 250}) == 200

        await asyncio.gather(*(player(ids[i::16]) for i in range(16)))
        await stop_process(proc)
        text = log.read_text()
        lines = [json.loads(line) for line in text.splitlines()]  # each one whole JSON
        assert sorted(line["request_id"] for line in lines) == sorted(ids)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- the `tls` field and the syslog sinks --------------------------------------------------------


async def test_the_tls_field_is_the_version_through_a_tls_listener_and_null_on_plain(
        start_balancer, backends, new_ca, tmp_path):
    [b] = await backends(1)
    pki = new_ca()
    cert, key = pki.pair("casino.example.com")
    log = tmp_path / "access.log"
    lb = await start_balancer(one_pool([b], top=log_top(log)), listeners=f"""
listeners:
  - {{name: public, address: 127.0.0.1:0, tls: {{certificate: {cert}, key: {key}}}}}
  - {{name: plain, address: 127.0.0.1:0}}
""")
    tls12 = pki.client_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    async with aiohttp.ClientSession() as http:
        for request_id, context in (("tls-13", pki.client_context()), ("tls-12", tls12)):
            async with http.get(f"https://127.0.0.1:{lb.port('public')}/", ssl=context,
                                server_hostname="casino.example.com",
                                headers={"X-Request-Id": request_id}) as resp:
                assert resp.status == 200
        assert await get(http, f"http://127.0.0.1:{lb.port('plain')}/", "plain-1") == 200
    for request_id, version in (("tls-13", "TLSv1.3"), ("tls-12", "TLSv1.2")):
        line = await line_for(lb, log, request_id)
        assert (line["tls"], line["listener"]) == (version, "public")
    plain = await line_for(lb, log, "plain-1")
    assert (plain["tls"], plain["listener"]) == (None, "plain")


def syslog_line(datagram: bytes) -> dict:
    """A syslog datagram as the balancer sends it: `<134>balancer[pid]: ` and one JSON line."""
    prefix = b"<134>balancer[%d]: " % os.getpid()  # local0.info; the balancer runs in this process
    assert datagram.startswith(prefix), datagram[:60]
    return json.loads(datagram[len(prefix):])


async def datagrams(sock: socket.socket, want: int) -> list[dict]:
    loop = asyncio.get_running_loop()
    return [syslog_line(await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)) for _ in range(want)]


async def log_metrics(http: aiohttp.ClientSession, lb: Running) -> tuple[float, float]:
    async with http.get(lb.admin_url + "/metrics") as resp:
        samples = metric_samples(await resp.text())
    return (samples[("balancer_access_log_lines_total", frozenset())],
            samples[("balancer_access_log_dropped_total", frozenset())])


async def test_syslog_over_udp_gets_one_datagram_per_line(start_balancer, backends, http):
    [b] = await backends(1)
    daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    daemon.bind(("127.0.0.1", 0))
    daemon.setblocking(False)
    try:
        lb = await start_balancer(one_pool([b], top=log_top(f"udp://127.0.0.1:{daemon.getsockname()[1]}")))
        for i in range(5):
            assert await get(http, lb.url + f"/spin?round={i}", f"udp-{i}") == 200
        await lb.app.access_log.flush()
        lines = await datagrams(daemon, 5)
        assert sorted(line["request_id"] for line in lines) == [f"udp-{i}" for i in range(5)]
        assert all(list(line) == FIELDS and line["outcome"] == "ok" for line in lines)
        assert await log_metrics(http, lb) == (5, 0)
    finally:
        daemon.close()


async def test_syslog_over_a_unix_socket_drops_and_counts_lines_while_the_daemon_is_away(
        start_balancer, backends, http):
    """No daemon at the path: every line is refused at once, dropped and counted, and players
    are served as usual. When the daemon binds its socket, the next lines reach it."""
    [b] = await backends(1)
    with tempfile.TemporaryDirectory(prefix="lb") as folder:  # short: a socket path has ~100 bytes
        path = os.path.join(folder, "log")
        lb = await start_balancer(one_pool([b], top=log_top(f"unix://{path}")))
        for i in range(20):
            assert await get(http, lb.url + "/", f"away-{i}") == 200
        await lb.app.access_log.flush()
        assert await log_metrics(http, lb) == (0, 20)
        daemon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        daemon.bind(path)
        daemon.setblocking(False)
        try:
            for i in range(3):
                assert await get(http, lb.url + "/", f"back-{i}") == 200
            await lb.app.access_log.flush()
            lines = await datagrams(daemon, 3)
            assert sorted(line["request_id"] for line in lines) == ["back-0", "back-1", "back-2"]
            assert await log_metrics(http, lb) == (3, 20)
        finally:
            daemon.close()


async def test_syslog_over_udp_to_nobody_never_holds_a_request(start_balancer, backends, http):
    """UDP has no delivery receipt: a port nobody listens on swallows the lines (the kernel
    takes each datagram, so they count as written) and requests are served as usual."""
    [b] = await backends(1)
    lb = await start_balancer(one_pool([b], top=log_top(f"udp://127.0.0.1:{free_port()}")))
    statuses = await asyncio.gather(*(get(http, lb.url + "/", f"lost-{i}") for i in range(50)))
    assert statuses == [200] * 50
    await lb.app.access_log.flush()
    written, dropped = await log_metrics(http, lb)
    assert written + dropped == 50
