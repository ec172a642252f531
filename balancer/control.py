"""The control plane: what runs once per instance beside the data plane.

Active health checks (balancer/health.py), Consul watches that feed pools their backends, and
this instance's own registration in Consul. With `workers: N` it runs in the parent process
only, so that probes and Consul queries do not multiply by the number of workers; they learn
its verdicts through balancer/messages.py. It changes the shared `Pool` / `Backend` state and
never touches a connection (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping

from .config import BackendConfig, ConsulConfig
from .discovery.consul import ConsulRegistration, ConsulWatch
from .health import HealthChecker
from .http.upstream import close_pooled
from .pool import Pool
from .tls import BackendTls

log = logging.getLogger("balancer")

# Told after a pool took a new set of backends from Consul (the control process passes it on
# to its workers).
OnDiscovered = Callable[[str, list[BackendConfig]], None]


class ControlPlane:
    def __init__(self, loop: asyncio.AbstractEventLoop, on_discovered: OnDiscovered | None = None) -> None:
        self.loop = loop
        self._on_discovered = on_discovered
        self.pools: dict[str, Pool] = {}
        self.health: dict[str, HealthChecker] = {}
        self.watches: dict[str, ConsulWatch] = {}
        self.registration: ConsulRegistration | None = None
        self._registering: asyncio.Task | None = None  # retrying a registration Consul refused

    async def follow(self, pools: dict[str, Pool], consul: ConsulConfig | None,
                     backend_tls: Mapping[str, BackendTls]) -> None:
        """Health checkers and Consul watches follow the pools of the current config (with
        `backend_tls`, each pool's TLS to its backends, which its probes use too).

        A watch is replaced only when what it watches changed (its pool's discovery, or the
        consul section apart from `register`), so a reload costs Consul no fresh reads. Old
        watches are stopped (awaited) before new ones start: a stopped watch never delivers.
        """
        self.pools = pools
        watched = _watched(consul or ConsulConfig())
        for name, pool in list(pools.items()):
            checker = self.health.get(name)
            tls = backend_tls.get(name)
            if checker is None:
                checker = self.health[name] = HealthChecker(pool, tls)
                checker.start()
            else:
                checker.pool = pool
                checker.tls = tls
                checker.sync()
            discovery = pool.config.discovery
            watch = self.watches.get(name)
            if watch is not None and (discovery is None or watch.discovery != discovery
                                      or watch.consul_config != watched):
                del self.watches[name]
                await watch.stop()
                watch = None
            if discovery is not None and watch is None and name in pools:
                watch = ConsulWatch(watched, name, discovery, self._discovered(name))
                self.watches[name] = watch
                await watch.start()
        for name in list(self.health):
            if name not in pools:
                await self.health.pop(name).stop()
        for name in list(self.watches):
            if name not in pools:
                await self.watches.pop(name).stop()

    def _discovered(self, pool_name: str) -> Callable[[list[BackendConfig]], None]:
        def on_change(backends: list[BackendConfig]) -> None:
            pool = self.pools.get(pool_name)
            watch = self.watches.get(pool_name)
            if pool is None or watch is None or watch.on_change is not on_change:
                return  # from a watch that a reload or shutdown is stopping: stale
            close_pooled(pool.set_discovered(backends))
            checker = self.health.get(pool_name)
            if checker is not None:
                checker.sync()
            if self._on_discovered is not None:
                self._on_discovered(pool_name, backends)
            log.info("pool %s: %d backends from Consul", pool_name, len(backends))
        return on_change

    async def register(self, consul: ConsulConfig, host: str, port: int, admin_url: str) -> None:
        """Register this instance (`consul.register`) at `host:port`. A wildcard host is sent
        as "" by the registration itself (Consul then advertises the node's own address)."""
        registration = self.registration = ConsulRegistration(consul)
        try:
            await registration.register(host, port, admin_url)
        except Exception as exc:  # Consul down must not stop the balancer from serving
            # ... nor leave this instance unfindable until its next restart.
            log.warning("consul registration failed: %s; retrying in the background", exc)
            self._registering = self.loop.create_task(
                registration.register_retrying(host, port, admin_url))

    def registration_changes(self, consul: ConsulConfig | None) -> bool:
        """Would a reload to `consul` add, remove or change this instance's registration?"""
        wanted = consul if consul is not None and consul.register is not None else None
        current = self.registration
        if current is None or wanted is None:
            return current is not wanted
        return _registered_as(current.consul_config) != _registered_as(wanted)

    async def leave_consul(self) -> None:
        """Withdraw this instance's registration (and stop retrying one): the first step of a
        shutdown, so that Consul sends new players elsewhere while this instance drains."""
        registering, self._registering = self._registering, None
        if registering is not None:
            registering.cancel()
            await asyncio.wait([registering])
        registration, self.registration = self.registration, None
        if registration is not None:
            try:
                await registration.deregister()
            except Exception as exc:
                log.warning("consul deregistration failed: %s", exc)

    async def stop(self) -> None:
        """Stop probing and watching; backend state is left as it is."""
        for checker in self.health.values():
            await checker.stop()
        for watch in self.watches.values():
            await watch.stop()


def _registered_as(consul: ConsulConfig) -> tuple:
    """What a registration depends on: where Consul is, the token, and what is registered."""
    return (consul.address, consul.token_env, consul.register)


def _watched(consul: ConsulConfig) -> ConsulConfig:
    """The part of the consul section a watch depends on: self-registration is not in it."""
    return dataclasses.replace(consul, register=None)
