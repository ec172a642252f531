"""Wires listeners, admin, discovery, health, reload and shutdown; owns every background task.

`App` keeps the state that outlives a config generation (pools with their backends, stats,
listener sockets) and swaps the compiled `Runtime` atomically on reload.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import ssl
import time
from typing import TYPE_CHECKING

from . import compiled, messages, signals
from .access_log import AccessLog
from .certificates import Certificates, CertificateError, load_certificates
from .config import Address, BackendConfig, Config, ConfigError, ListenerConfig
from .config_file import load_config
from .admin import AdminServer
from .control import ControlPlane
from .http.client_side import ClientConnection
from .http.upstream import close_pooled
from .log_format import use_log_format
from .metrics import Stats
from .plugins import build_plugins
from .pool import Pool
from .runtime import Runtime, RuntimeRef
from .server import ListenerServer
from .split import Split
from .status import SAMPLE_INTERVAL, RecentTraffic
from .sticky import secret_from_env
from .tasks import spawn

if TYPE_CHECKING:
    from .workers import Workers

log = logging.getLogger("balancer")

SWEEP_INTERVAL = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """The last reload: when (unix time) and its errors (none: it succeeded)."""

    at: float
    errors: tuple[str, ...]


class App:
    """One process of the balancer: the data plane (listeners, pools, the runtime in force)
    and, unless it is a worker, the control plane (`ControlPlane`: health checks, Consul) and
    the admin listener.

    With `workers: 1` one process has it all. With more, the parent has no listeners
    (`listens=False`) and talks to its `workers`; each worker has no control plane
    (`control=False`) and serves on the `listener_sockets` the parent bound for it.
    """

    def __init__(self, config: Config, config_path: str | None = None,
                 loop: asyncio.AbstractEventLoop | None = None, *, listens: bool = True,
                 control: bool = True, secrets: dict[str, bytes] | None = None,
                 listener_sockets: dict[str, socket.socket] | None = None,
                 workers: Workers | None = None,
                 worker_listeners: dict[str, tuple[Address, int]] | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.loop = loop or asyncio.get_event_loop()
        self.stats = Stats()
        self.started_at = time.time()
        self.config_loaded_at = self.started_at  # the config in force: start or last good reload
        self.last_reload: ReloadOutcome | None = None
        # The last minute of per-backend traffic, for the status page (admin process only).
        self.recent = RecentTraffic()
        # Opened at start (by the processes that serve traffic), reconfigured by reloads.
        self.access_log = AccessLog(self.loop)
        self.stats.access_log = self.access_log
        self.pools: dict[str, Pool] = {}
        self.listeners: dict[str, ListenerServer] = {}
        # Listeners a reload closed: no longer accepting, but their connections live on.
        self.retired: list[ListenerServer] = []
        self.listens = listens
        self.control = ControlPlane(self.loop, self._discovered) if control else None
        self.admin = None
        self._secrets: dict[str, bytes] = dict(secrets or {})
        # The control process's link to its workers, if any.
        self.workers = workers
        self._tasks: list[asyncio.Task] = []
        self._stopping = asyncio.Event()
        # A reload runs whole or not at all: shutdown waits for one in progress, and none
        # starts after it (it would re-open listeners or re-register in Consul).
        self._reload_lock = asyncio.Lock()
        self._closing = False
        self.started = False
        # Every TLS context of the config in force, read from its files (again at each reload).
        self.certificates = load_certificates(config)
        self._runtime_ref = RuntimeRef(self._compile(config, self.certificates))
        # The pools exist from here on, not from `start`: in a worker, the control process's
        # first Consul sets and health states may arrive before `start` runs, and a message
        # for a pool not yet known would be dropped for good.
        self.pools = {name: runtime.pool for name, runtime in self.runtime.pools.items()}
        # Listener sockets handed over by a parent process (workers); name -> socket.
        self._inherited_sockets = dict(listener_sockets or {})
        # Control process: where its workers' listeners were bound at start,
        # name -> (configured address, bound port), for the status page.
        self.worker_listeners = dict(worker_listeners or {})

    # -- building -------------------------------------------------------------------------

    def _secret(self, env_name: str) -> bytes:
        """One secret per variable for the life of the process: a random fallback must not
        change on reload, or every player would lose their cookie."""
        secret = self._secrets.get(env_name)
        if secret is None:
            secret = self._secrets[env_name] = secret_from_env(env_name)
        return secret

    def _compile(self, config: Config, certificates: Certificates) -> Runtime:
        pools: dict[str, Pool] = {}
        for name, pool_config in config.pools.items():
            pool = self.pools.get(name)
            if pool is None:
                pool = Pool(pool_config)
            pools[name] = pool
        return Runtime(config, pools, self.stats, self._secret, build_plugins, self.access_log,
                       backend_tls=certificates.pools)

    @property
    def runtime(self) -> Runtime:
        """The runtime in force. Listeners share its holder (RuntimeRef), so setting it here
        reaches every connection's next request."""
        return self._runtime_ref.current

    @runtime.setter
    def runtime(self, runtime: Runtime) -> None:
        self._runtime_ref.current = runtime

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.listens:
            access_log = self.config.access_log
            self.access_log.configure(access_log, self.access_log.open_writer(access_log))
            for listener in self.config.listeners:
                self.listeners[listener.name] = await self._open_listener(listener)
        await self._sync_background()
        self._tasks.append(self.loop.create_task(self._sweep()))
        if self.control is not None:
            self.admin = AdminServer(self)
            await self.admin.start()
            self.recent.record(self.stats_for_scrape())
            self._tasks.append(self.loop.create_task(self._sample_traffic()))
            log.info("admin on %s", self.admin.url)
            if self.config.consul is not None and self.config.consul.register is not None:
                await self._register(self.control)
        self.started = True

    def _adopt_pools(self, config: Config) -> None:
        for name, pool_config in config.pools.items():
            pool = self.runtime.pools[name].pool
            if name in self.pools and self.pools[name] is pool:
                close_pooled(pool.reconfigure(pool_config))
            self.pools[name] = pool
        for name in list(self.pools):
            if name not in config.pools:
                # The pool's in-flight requests finish on their old runtime; drain its backends.
                for backend in self.pools[name].backends.values():
                    self.pools[name].start_drain(backend)
                del self.pools[name]

    async def _open_listener(self, listener: ListenerConfig,
                             certificates: Certificates | None = None) -> ListenerServer:
        context = (certificates or self.certificates).listeners.get(listener.name)
        server = ListenerServer(listener, self._runtime_ref, self.loop, ClientConnection, context,
                                reuse_port=self.config.workers != 1)
        # Our own listener on the same address (a reload re-opening it) may share the port;
        # anyone else's means a second instance started by mistake: fail loudly.
        ours = any(s.config.address == listener.address for s in self.listeners.values())
        await server.start(self._inherited_sockets.pop(listener.name, None), exclusive=not ours)
        log.info("listener %s on %s", listener.name, _where(server))
        return server

    async def _sync_background(self) -> None:
        if self.control is not None:
            await self.control.follow(self.pools, self.config.consul, self.certificates.pools)

    def _discovered(self, pool_name: str, backends: list[BackendConfig]) -> None:
        if self.workers is not None:
            self.workers.broadcast_discovered(pool_name, backends)

    async def _register(self, control: ControlPlane) -> None:
        consul = self.config.consul
        assert consul is not None and consul.register is not None
        first = next(iter(self.listeners.values()), None)
        # The control process of `workers: N` holds no listener (the workers do): it registers
        # the configured address.
        listener = first.config if first is not None else self.config.listeners[0]
        port = first.port if first is not None else listener.address.port
        admin_url = self.admin.url if self.admin else ""
        await control.register(consul, listener.address.host, port, admin_url)

    async def _sync_registration(self) -> None:
        """A reload that adds, removes or changes `consul.register` is followed in Consul."""
        control = self.control
        consul = self.config.consul
        if control is None or not control.registration_changes(consul):
            return
        await control.leave_consul()
        if consul is not None and consul.register is not None:
            await self._register(control)

    async def leave_consul(self) -> None:
        """Withdraw this instance's registration: the first step of a shutdown."""
        if self.control is not None:
            await self.control.leave_consul()

    async def _sweep(self) -> None:
        """Once a second: forget drained backends, close WebSockets whose drain ran out."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for pool in list(self.pools.values()):
                overdue, dropped = pool.forget_drained(now)
                close_pooled(dropped)
                for backend in overdue:
                    for exchange in list(backend.tunnels):
                        exchange.close_for_drain()
                    log.info("pool %s: drain of %s ran out; closed its WebSockets", pool.name, backend.id)

    async def _sample_traffic(self) -> None:
        """Every few seconds: a sample of the counters, so that the status page's "last
        minute" has a base a minute old even when nobody looked meanwhile."""
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            await self.refresh_from_workers()
            self.recent.record(self.stats_for_scrape())

    # -- reload ---------------------------------------------------------------------------

    async def reload(self) -> list[str]:
        """Validate, then swap atomically. Returns the errors (empty on success)."""
        async with self._reload_lock:
            if self._closing:
                return ["shutting down: reload refused"]
            errors = await self._reload()
        self.stats.reloads["failure" if errors else "success"] += 1
        self.last_reload = ReloadOutcome(time.time(), tuple(errors))
        if not errors:
            self.config_loaded_at = self.last_reload.at
        return errors

    async def _reload(self) -> list[str]:
        if self.config_path is None:
            return ["no config file to reload from"]
        try:
            config = load_config(self.config_path)
            # Every certificate, key and CA file is read again, changed config or not: this
            # is how renewed certificates come into force.
            certificates = load_certificates(config)
            runtime = self._compile(config, certificates)
        except ConfigError as exc:
            log.error("reload refused, nothing changed:\n%s", "\n".join(exc.lines()))
            return exc.lines()
        except CertificateError as exc:
            log.error("reload refused, the certificates in force stay:\n%s", "\n".join(exc.errors))
            return exc.errors
        except (OSError, ValueError, ssl.SSLError) as exc:
            log.error("reload refused, nothing changed: %s", exc)
            return [f"{self.config_path}: {exc}"]
        try:
            log_writer = self.access_log.open_writer(config.access_log) if self.listens else None
        except OSError as exc:
            log.error("reload refused, nothing changed: cannot open the access log: %s", exc)
            return [f"{self.config_path}: access_log.path: {exc}"]
        old_listeners = {l.name: _bound(l) for l in self.config.listeners}
        if not self.listens:
            old_listeners = {l.name: _bound(l) for l in config.listeners}  # workers own the sockets
        # Open every new or changed listener before touching the old ones, so that a listener
        # that cannot be opened leaves everything as it was, and a re-opened port never stops
        # accepting (the new socket binds beside the old one with SO_REUSEPORT). A listener
        # whose only change is TLS (or nothing) keeps its socket: it takes the new contexts.
        opened: dict[str, ListenerServer] = {}
        try:
            for listener in config.listeners:
                if old_listeners.get(listener.name) != _bound(listener):
                    opened[listener.name] = await self._open_listener(listener, certificates)
        except (OSError, ssl.SSLError) as exc:
            for server in opened.values():
                await server.stop_accepting()
            if log_writer is not None:
                log_writer.stop()
            log.error("reload refused, nothing changed: cannot open listener: %s", exc)
            return [f"{self.config_path}: listeners: {exc}"]
        for name, server in opened.items():
            previous = self.listeners.get(name)
            self.listeners[name] = server
            if previous is not None:
                await previous.stop_accepting()  # its open connections carry on
                self.retired.append(previous)
        kept = {listener.name for listener in config.listeners}
        for name in list(self.listeners):
            if name not in kept:
                # Stop accepting; its open connections finish on their own.
                server = self.listeners.pop(name)
                await server.stop_accepting()
                self.retired.append(server)
        self.retired = [s for s in self.retired if s.connections]
        if config.admin.address != self.config.admin.address or config.workers != self.config.workers:
            log.warning("reload: admin.address and workers take effect only at restart")
        for listener in config.listeners:
            server = self.listeners.get(listener.name)
            if server is not None and listener.name not in opened:
                # New handshakes use the new certificates; open connections keep theirs.
                server.use_tls(listener, certificates.listeners.get(listener.name))
        old_runtime = self.runtime
        self.config = config
        self.certificates = certificates
        self.runtime = runtime
        use_log_format(config.log_format)
        if self.listens:
            self.access_log.configure(config.access_log, log_writer)
        self._adopt_pools(config)
        await self._sync_background()
        await self._sync_registration()
        log.info("config reloaded from %s", self.config_path)
        self.loop.call_later(60, old_runtime.close)  # in-flight requests may still use it
        return []

    # -- what the admin listener asks -----------------------------------------------------

    def stats_for_scrape(self) -> Stats:
        if self.workers is not None:
            return self.workers.stats
        return self.stats

    def pools_for_scrape(self) -> list[Pool]:
        return list(self.pools.values())

    async def refresh_from_workers(self) -> None:
        """Control process: sum the workers' counters into this process's view before an
        admin answer, so /metrics and /admin/pools speak for the whole instance."""
        if self.workers is not None:
            await self.workers.collect(self)

    def not_ready_reasons(self) -> list[str]:
        """Why this instance should not get traffic: a route whose pool has no eligible backend."""
        now = time.monotonic()
        reasons = []
        for route in self.runtime.routes.routes:
            names = route.config.pools
            if not any(name in self.pools and self.pools[name].eligible(now, allow_panic=False)
                       for name in names):
                which = "pool " + names[0] if len(names) == 1 else "pools " + ", ".join(names)
                reasons.append(f"route {route.name}: {which} {'has' if len(names) == 1 else 'have'} "
                               "no eligible backend")
        return reasons

    async def set_drain(self, pool_name: str, backend_id: str, drain: bool) -> str | None:
        pool = self.pools.get(pool_name)
        if pool is None:
            return f"no pool {pool_name}"
        backend = pool.get(backend_id)
        if backend is None:
            return f"no backend {backend_id} in pool {pool_name}"
        if drain:
            pool.start_drain(backend)
        else:
            pool.stop_drain(backend)
        if self.workers is not None:
            self.workers.broadcast(messages.Drain(pool_name, backend_id, drain))
        return None

    def _split_of(self, route_name: str) -> tuple[Split | None, tuple[int, dict]]:
        """The split of a route, or the admin API's error answer when there is none."""
        route = next((r for r in self.runtime.routes.routes if r.name == route_name), None)
        if route is None:
            return None, (404, {"error": f"no route {route_name}"})
        if route.split is None:
            return None, (409, {"error": f"route {route_name} has no split (it serves pool {route.pool_name})"})
        return route.split, (200, {})

    def describe_split(self, route_name: str) -> tuple[int, dict]:
        """The weights in force for a route's split, and whether they are the file's."""
        split, error = self._split_of(route_name)
        if split is None:
            return error
        return 200, {"route": route_name, "split": split.describe(),
                     "changed_at_runtime": split.changed_at_runtime}

    async def set_split(self, route_name: str, weights: dict[str, int]) -> tuple[int, dict]:
        """Change a route's canary weights at run time (and in every worker). Returns the HTTP
        status and answer for the admin API. The change lives in the running config only: the
        next reload takes the weights from the file again."""
        split, error = self._split_of(route_name)
        if split is None:
            return error
        names = [pool.name for pool in split.sides]
        if sorted(weights) != sorted(names):
            return 400, {"error": f"give a weight for each pool of the split: {', '.join(names)}"}
        split.set_weights([weights[name] for name in names])
        split.changed_at_runtime = True
        if self.workers is not None:
            self.workers.broadcast(messages.Split(route_name, weights))
        log.warning("route %s: split set to %s at run time (until the next reload)", route_name,
                    ", ".join(f"{name} {weights[name]}" for name in names))
        return 200, {"route": route_name, "split": split.describe(),
                     "note": "a run-time change: the next reload (SIGHUP, /admin/reload) "
                             "restores the weights of the config file; change the file too to keep it"}

    async def reload_everywhere(self) -> list[str]:
        """Reload here, and (control process) in every worker once it validated here."""
        errors = await self.reload()
        if errors or self.workers is None:
            return errors
        return await self.workers.reload()

    # -- shutdown -------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def start_unless_stopped(self) -> bool:
        """`start`, given up as soon as a stop is asked (a signal during start-up, say while
        Consul takes its time to answer the registration). True if it started; else what
        did start is left for `shutdown` to close, which copes with any part of it."""
        starting = self.loop.create_task(self.start())
        stopping = self.loop.create_task(self._stopping.wait())
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if starting.done():
            starting.result()  # a start that failed (a busy port) says so
            return True
        starting.cancel()
        try:
            await starting
        except asyncio.CancelledError:
            pass
        log.info("stop asked during start-up")
        return False

    async def quiesce(self) -> None:
        """No reload from now on; one in progress is let finish first."""
        async with self._reload_lock:
            self._closing = True

    async def shutdown(self) -> None:
        """Stop accepting, finish in-flight requests and drain WebSockets for up to
        shutdown_timeout, then close what is left."""
        await self.quiesce()
        for server in self.listeners.values():
            await server.stop_accepting()
        servers = list(self.listeners.values()) + self.retired
        deadline = time.monotonic() + self.config.shutdown_timeout
        # Leave Consul first: while in-flight requests finish here, whatever finds instances
        # through Consul (L4, DNS) must already be sending new players elsewhere.
        await self.leave_consul()
        while time.monotonic() < deadline:
            for server in servers:
                server.close_idle()
            if not any(server.busy() for server in servers):
                break
            await asyncio.sleep(0.05)
        for server in servers:
            for conn in list(server.connections):
                conn.close()
        for task in self._tasks:
            task.cancel()
        if self.control is not None:
            await self.control.stop()
        if self.admin is not None:
            await self.admin.stop()
        for pool in self.pools.values():
            close_pooled(pool.backends.values())
        await self.access_log.close()
        self.runtime.close()

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT, which end it cleanly from the first moment on (during
        start-up too); SIGHUP reloads once started."""
        loop = self.loop
        signals.stop_on_signals(loop, self.request_stop)
        if not await self.start_unless_stopped():
            await self.shutdown()
            return
        if self.control is None:
            loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the control process relays
        else:
            loop.add_signal_handler(signal.SIGHUP, lambda: spawn(self.reload_everywhere()))
        # logrotate's postrotate: every process that writes reopens (the control process of
        # `workers: N` relays it to its workers).
        loop.add_signal_handler(signal.SIGUSR1, self.access_log.reopen)
        if not compiled.COMPILED and not os.environ.get("BALANCER_PURE_PYTHON"):
            log.warning("data plane %s: expect about a fifth less throughput", compiled.describe())
        log.info("balancer ready (pid %d, data plane %s)", os.getpid(), compiled.describe())
        await self.wait_stopped()
        log.info("shutting down: finishing in-flight requests (up to %.0fs)", self.config.shutdown_timeout)
        await self.shutdown()


def _where(server: ListenerServer) -> str:
    return f"{server.config.address.host}:{server.port}"


def _bound(listener: ListenerConfig) -> ListenerConfig:
    """What a listener's socket depends on; its TLS is swapped in place."""
    return dataclasses.replace(listener, tls=None)
