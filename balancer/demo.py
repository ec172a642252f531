"""`make run`: the balancer on config/demo.yaml plus a demo game backend for every static
backend the config names, so a newcomer can curl it at once. Each backend answers with its
id and region, serves /health, and echoes WebSocket messages on any path under /ws/."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSMsgType, web

from .app import App
from .config import BackendConfig
from .config_file import load_config

log = logging.getLogger("balancer.demo")


def demo_backend(backend: BackendConfig) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({
            "backend": backend.id, "region": backend.region, "path": request.path,
            "client_region": request.headers.get("X-Client-Region"),
            "request_id": request.headers.get("X-Request-Id"),
        }, headers={"X-Backend": backend.id})

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(f"connected to {backend.id}")
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(f"{backend.id}: {message.data}")
        return ws

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ws/{tail:.*}", echo)
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


async def _main(config_path: str) -> None:
    config = load_config(config_path)
    runners = []
    for pool in config.pools.values():
        for backend in pool.backends:
            runner = web.AppRunner(demo_backend(backend), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, backend.address.host, backend.address.port).start()
            runners.append(runner)
            log.info("demo backend %s (%s) on %s", backend.id, backend.region, backend.address)
    app = App(config, config_path, asyncio.get_running_loop())
    try:
        await app.serve()
    finally:
        for runner in runners:
            await runner.cleanup()


def run_demo(config_path: str) -> int:
    asyncio.run(_main(config_path))
    return 0
