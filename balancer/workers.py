"""`workers: N|auto`: N data-plane processes on SO_REUSEPORT, one control process.

The parent binds one listening socket per worker per listener (SO_REUSEPORT, so the kernel
spreads new connections across workers; port 0 is resolved once so that all share the port),
forks the workers, then becomes the control process: admin listener, active health checks,
Consul watches and reload run there once, not N times. It talks to each worker over a
socketpair with the typed messages of balancer/messages.py:

    control -> worker: Health (backend health and slow-start ramp), Discovered (Consul sets),
                       Drain, Split, Reload, Snapshot (counters for /metrics, /admin/pools)
    worker -> control: replies (Done, Reloaded, Counters, Refused), matched by id

Passive outlier detection stays per worker: it judges the traffic that worker sees.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from . import signals
from .app import App
from .config import BackendConfig, Config, worker_count
from .messages import (
    Counters, Discovered, Done, Drain, Health, HealthStates, Message, Refused, Reload, Reloaded,
    Snapshot, Split, decode, encode,
)
from .metrics import Stats, merge_snapshots
from .http.upstream import close_pooled
from .server import bind_listener
from .sticky import secret_from_env
from .tasks import spawn

log = logging.getLogger("balancer.workers")

HEALTH_PUSH_INTERVAL = 0.1
REPLY_TIMEOUT = 2.0


# -- the worker side --------------------------------------------------------------------------

class ControlLink:
    """In a worker: applies what the control process says, answers its questions."""

    def __init__(self, app: App, sock: socket.socket) -> None:
        self.app = app
        self.sock = sock
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        reader, writer = await asyncio.open_connection(sock=self.sock)
        self._task = asyncio.get_running_loop().create_task(self._serve(reader, writer))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line = await reader.readline()
            if not line:
                # The control process is gone: finish what is in flight and leave.
                self.app.request_stop()
                return
            message_id, message = decode(line)
            reply = await self.handle(message)
            if message_id is not None:
                writer.write(encode(reply, message_id))

    async def handle(self, message: Message) -> Message:
        app = self.app
        if isinstance(message, Health):
            for pool_name, states in message.pools.items():
                pool = app.pools.get(pool_name)
                if pool is None:
                    continue
                for backend_id, (healthy, ramp_start) in states.items():
                    backend = pool.get(backend_id)
                    if backend is not None:
                        backend.healthy = healthy
                        backend.ramp_start = ramp_start
        elif isinstance(message, Discovered):
            pool = app.pools.get(message.pool)
            if pool is not None:
                close_pooled(pool.set_discovered(list(message.backends)))
        elif isinstance(message, Drain):
            await app.set_drain(message.pool, message.backend, message.drain)
        elif isinstance(message, Split):
            await app.set_split(message.route, message.weights)
        elif isinstance(message, Reload):
            return Reloaded(tuple(await app.reload()))
        elif isinstance(message, Snapshot):
            return Counters(app.stats.snapshot(), pool_counters(app))
        else:
            return Refused(f"not a question for a worker: {type(message).__name__}")
        return Done()


def pool_counters(app: App) -> dict:
    now = time.monotonic()
    out: dict[str, Any] = {}
    for name, pool in app.pools.items():
        out[name] = {
            "retries": pool.retries_total, "panics": pool.panics_total,
            "stale_retries": pool.stale_retries_total,
            "backends": {
                b.id: {
                    "active": b.active_requests, "websockets": b.websockets,
                    "errors": b.upstream_errors, "ejections": b.ejections_total,
                    # remaining ejection, as monotonic clocks agree across processes anyway
                    "ejected_for": max(0.0, b.ejected_until - now),
                } for b in pool.backends.values()
            },
        }
    return out


# -- the control side --------------------------------------------------------------------------

class WorkerHandle:
    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[Message]] = {}
        self.alive = True

    async def start(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(sock=self.sock)
        spawn(self._read())

    async def _read(self) -> None:
        assert self.reader is not None
        while True:
            try:
                line = await self.reader.readline()
            except OSError:  # ConnectionResetError among them
                # A worker killed mid-stop resets its end: the same news as an end of file.
                line = b""
            if not line.endswith(b"\n"):  # the end, possibly after half a line: not a reply
                self.alive = False
                for future in self.pending.values():
                    if not future.done():
                        future.set_exception(ConnectionError("worker gone"))
                return
            message_id, message = decode(line)
            future = self.pending.pop(message_id, None) if message_id is not None else None
            if future is not None and not future.done():
                future.set_result(message)

    def send(self, message: Message, message_id: int | None = None) -> None:
        if self.alive and self.writer is not None:
            self.writer.write(encode(message, message_id))


class Workers:
    """The control process's view of its workers."""

    def __init__(self, handles: list[WorkerHandle]) -> None:
        self.handles = handles
        self.stats = Stats()
        self._next_id = 0
        self._last_health: HealthStates | None = None

    async def start(self, app: App) -> None:
        for handle in self.handles:
            await handle.start()
        spawn(self._push_health(app))

    def broadcast(self, message: Message) -> None:
        for handle in self.handles:
            handle.send(message)

    def broadcast_discovered(self, pool: str, backends: list[BackendConfig]) -> None:
        self.broadcast(Discovered(pool, tuple(backends)))

    async def ask(self, message: Message) -> list[Message]:
        """Send to every live worker and gather the replies (a silent worker is skipped)."""
        loop = asyncio.get_running_loop()
        futures = []
        for handle in self.handles:
            if not handle.alive:
                continue
            self._next_id += 1
            future = loop.create_future()
            handle.pending[self._next_id] = future
            handle.send(message, self._next_id)
            futures.append((handle, self._next_id, future))
        replies = []
        for handle, message_id, future in futures:
            try:
                replies.append(await asyncio.wait_for(future, REPLY_TIMEOUT))
            except (asyncio.TimeoutError, ConnectionError):
                # Forget the question: a worker that never answers must not collect them.
                handle.pending.pop(message_id, None)
        return replies

    async def reload(self) -> list[str]:
        errors: list[str] = []
        for reply in await self.ask(Reload()):
            if isinstance(reply, Reloaded):
                errors.extend(reply.errors)
        return errors

    async def collect(self, app: App) -> None:
        """Sum the workers' counters into the control process's Stats and Backend objects."""
        replies = [r for r in await self.ask(Snapshot()) if isinstance(r, Counters)]
        stats = merge_snapshots(r.stats for r in replies)
        stats.reloads = app.stats.reloads  # reloads are counted where they are decided
        self.stats = stats
        now = time.monotonic()
        for name, pool in app.pools.items():
            counters = [r.pools.get(name, {}) for r in replies]
            pool.retries_total = sum(c.get("retries", 0) for c in counters)
            pool.panics_total = sum(c.get("panics", 0) for c in counters)
            pool.stale_retries_total = sum(c.get("stale_retries", 0) for c in counters)
            for backend in pool.backends.values():
                parts = [c["backends"][backend.id] for c in counters
                         if backend.id in c.get("backends", ())]
                backend.active_requests = sum(p["active"] for p in parts)
                backend.websockets = sum(p["websockets"] for p in parts)
                backend.ejections_total = sum(p["ejections"] for p in parts)
                errors: dict[str, int] = {}
                for p in parts:
                    for kind, value in p["errors"].items():
                        errors[kind] = errors.get(kind, 0) + value
                backend.upstream_errors = errors
                ejected_for = max((p["ejected_for"] for p in parts), default=0.0)
                backend.ejected_until = now + ejected_for if ejected_for > 0 else 0.0

    async def _push_health(self, app: App) -> None:
        """Active health lives in the control process; workers get its changes."""
        while True:
            state = {
                name: {b.id: (b.healthy, b.ramp_start) for b in pool.backends.values()}
                for name, pool in app.pools.items()
            }
            if state != self._last_health:
                self._last_health = state
                self.broadcast(Health(state))
            await asyncio.sleep(HEALTH_PUSH_INTERVAL)


class Supervisor:
    """Binds, forks the workers, runs the control process, and stops them all together."""

    def __init__(self, config: Config, config_path: str) -> None:
        self.config = config
        self.config_path = config_path
        self.count = worker_count(config)

    def _bind(self) -> dict[str, list[socket.socket]]:
        """Per listener, one SO_REUSEPORT socket per worker, all on the same port."""
        sockets: dict[str, list[socket.socket]] = {}
        for listener in self.config.listeners:
            first = bind_listener(listener.address, exclusive=True)
            port = first.getsockname()[1]
            group = [first]
            for _ in range(self.count - 1):
                group.append(bind_listener(listener.address, port=port))
            sockets[listener.name] = group
        return sockets

    def run(self) -> int:
        # Secrets are settled before forking: a random fallback must be the same in every
        # worker, or one worker would refuse another's sticky cookies.
        secrets = {p.sticky.secret_env: secret_from_env(p.sticky.secret_env)
                   for p in self.config.pools.values() if p.sticky is not None}
        sockets = self._bind()
        handles: list[WorkerHandle] = []
        for index in range(self.count):
            parent_end, child_end = socket.socketpair()
            pid = os.fork()
            if pid == 0:
                parent_end.close()
                for h in handles:
                    h.sock.close()
                mine = {name: group[index] for name, group in sockets.items()}
                for group in sockets.values():
                    for other in group:
                        if all(other is not s for s in mine.values()):
                            other.close()
                code = self._run_worker(index, mine, child_end, secrets)
                os._exit(code)
            child_end.close()
            handles.append(WorkerHandle(pid, parent_end))
        # What the control process reports for listeners it does not hold (port 0 resolved).
        self.bound = {listener.name: (listener.address, sockets[listener.name][0].getsockname()[1])
                      for listener in self.config.listeners}
        for group in sockets.values():
            for sock in group:
                sock.close()
        return self._run_control(handles, secrets)

    def _run_worker(self, index: int, sockets: dict[str, socket.socket], link: socket.socket,
                    secrets: dict[str, bytes]) -> int:
        import uvloop

        async def main() -> None:
            app = App(self.config, self.config_path, asyncio.get_running_loop(), control=False,
                      secrets=secrets, listener_sockets=sockets)
            control = ControlLink(app, link)
            await control.start()
            await app.serve()

        try:
            uvloop.run(main())
        except Exception:
            log.exception("worker %d failed", index)
            return 1
        return 0

    def _run_control(self, handles: list[WorkerHandle], secrets: dict[str, bytes]) -> int:
        import uvloop

        exit_code = 0

        async def main() -> None:
            nonlocal exit_code
            loop = asyncio.get_running_loop()
            workers = Workers(handles)
            app = App(self.config, self.config_path, loop, listens=False, secrets=secrets,
                      workers=workers, worker_listeners=self.bound)
            # First of all: a stop asked from here on (or before, while forking) ends the
            # instance cleanly, workers and Consul registration included.
            signals.stop_on_signals(loop, app.request_stop)
            await workers.start(app)
            # The workers write the access log: logrotate's SIGUSR1 to this process is theirs.
            def reopen_logs() -> None:
                for handle in handles:
                    _signal(handle.pid, signal.SIGUSR1)

            loop.add_signal_handler(signal.SIGUSR1, reopen_logs)
            watcher = loop.create_task(self._watch_children(handles, app))
            if await app.start_unless_stopped():
                loop.add_signal_handler(signal.SIGHUP, lambda: spawn(app.reload_everywhere()))
                log.info("balancer ready: %d workers (pids %s)", len(handles),
                         ", ".join(str(h.pid) for h in handles))
                await app.wait_stopped()
            watcher.cancel()
            await app.quiesce()  # a reload in progress ends first: it could re-register
            await app.leave_consul()  # before the workers stop accepting and drain
            for handle in handles:
                _signal(handle.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.config.shutdown_timeout + 5
            for handle in handles:
                code = await _wait_child(handle.pid, deadline)
                if code != 0:
                    exit_code = 1
            await app.shutdown()
            if self._crashed:
                exit_code = 1

        self._crashed = False
        uvloop.run(main())
        return exit_code

    async def _watch_children(self, handles: list[WorkerHandle], app: App) -> None:
        """A worker that dies takes the instance down (exit 1) so the service manager restarts
        it whole: a half-capacity instance that still looks ready would be worse."""
        while True:
            await asyncio.sleep(0.5)
            for handle in handles:
                try:
                    pid, status = os.waitpid(handle.pid, os.WNOHANG)
                except ChildProcessError:
                    pid, status = handle.pid, 1
                if pid != 0:
                    handle.alive = False
                    if status == 0:
                        # A worker ends cleanly only when told to stop (a SIGTERM sent to the
                        # whole process group, as systemd does): the instance stops with it.
                        log.info("worker %d stopped; stopping the instance", handle.pid)
                    else:
                        log.error("worker %d exited unexpectedly (status %d); stopping",
                                  handle.pid, status)
                        self._crashed = True
                    app.request_stop()
                    return


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


async def _wait_child(pid: int, deadline: float) -> int:
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            _signal(pid, signal.SIGKILL)
        await asyncio.sleep(0.05)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run through `balancer run`")
