"""The admin listener (admin_http.py, off the hot path): the status page (/), /status, /metrics,
/healthz, /readyz, /admin/*.

It binds to loopback by default and is never reachable through a public listener. When the
variable named by `admin.token_env` is set, /admin/* needs `Authorization: Bearer <token>`;
what only reads (the page, /status, /metrics) never does.
"""

from __future__ import annotations

import hmac
import os
from importlib import resources
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .admin_http import AdminHttpServer, Request, Response, Router, json_response
from .metrics import BalancerCollector
from .status import pools_doc, status_document

if TYPE_CHECKING:
    from .app import App

class AdminServer:
    def __init__(self, app: App) -> None:
        self.app = app
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BalancerCollector(
            stats=lambda: app.stats_for_scrape(),
            pools=lambda: app.pools_for_scrape(),
            consul=lambda: app.control.watches.values() if app.control is not None else (),
            instance=lambda: app,
            certificates=lambda: app.certificates.expiries,
        ))
        self.http = AdminHttpServer(self._auth)
        self.router = self.routes()
        self.port = 0
        self.host = app.config.admin.address.host

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def routes(self) -> Router:
        router = Router()
        router.add("GET", "/", self.page)
        for name in STATIC:
            router.add("GET", f"/{name}", self.static)
        router.add("GET", "/status", self.status)
        router.add("GET", "/metrics", self.metrics)
        router.add("GET", "/healthz", self.healthz)
        router.add("GET", "/readyz", self.readyz)
        router.add("GET", "/admin/pools", self.pools)
        router.add("POST", "/admin/pools/{pool}/backends/{backend}/drain", self.drain)
        router.add("POST", "/admin/pools/{pool}/backends/{backend}/undrain", self.undrain)
        router.add("POST", "/admin/reload", self.reload)
        router.add("GET", "/admin/routes/{route}/split", self.show_split)
        router.add("POST", "/admin/routes/{route}/split", self.split)
        return router

    async def start(self) -> None:
        address = self.app.config.admin.address
        self.port = await self.http.start(address.host, address.port)

    async def stop(self) -> None:
        await self.http.stop()

    # -- middleware -----------------------------------------------------------------------

    async def _auth(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD") and not _same_origin(request):
            # A web page elsewhere must not drain or reload through an operator's browser
            # (a plain cross-site POST needs no CORS preflight). Browsers send Origin on such
            # requests; curl and scripts send none and are not concerned.
            return json_response({"error": "cross-origin request refused"}, status=403)
        if request.path.startswith("/admin"):
            token = os.environ.get(self.app.config.admin.token_env)
            if token:
                given = request.headers.get("Authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                    return json_response({"error": "unauthorized"}, status=401,
                                             headers={"WWW-Authenticate": "Bearer"})
        handler = self.router.resolve(request)
        return handler if isinstance(handler, Response) else await handler(request)

    # -- handlers ---------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return _static_response("status.html")

    async def static(self, request: Request) -> Response:
        return _static_response(request.path.lstrip("/"))

    async def status(self, request: Request) -> Response:
        await self.app.refresh_from_workers()
        self.app.recent.record(self.app.stats_for_scrape())
        return json_response(status_document(self.app), headers=NO_STORE)

    async def metrics(self, request: Request) -> Response:
        await self.app.refresh_from_workers()
        body = generate_latest(self.registry)
        return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        await self.app.refresh_from_workers()
        reasons = self.app.not_ready_reasons()
        if reasons:
            return json_response({"status": "not ready", "reasons": reasons}, status=503)
        return json_response({"status": "ready"})

    async def pools(self, request: Request) -> Response:
        await self.app.refresh_from_workers()
        self.app.recent.record(self.app.stats_for_scrape())
        return json_response({"pools": pools_doc(self.app)}, headers=NO_STORE)

    async def drain(self, request: Request) -> Response:
        return await self._set_drain(request, True)

    async def undrain(self, request: Request) -> Response:
        return await self._set_drain(request, False)

    async def _set_drain(self, request: Request, drain: bool) -> Response:
        pool_name = request.match_info["pool"]
        backend_id = request.match_info["backend"]
        error = await self.app.set_drain(pool_name, backend_id, drain)
        if error is not None:
            return json_response({"error": error}, status=404)
        return json_response({"result": "draining" if drain else "undrained",
                                  "pool": pool_name, "backend": backend_id})

    async def show_split(self, request: Request) -> Response:
        status, answer = self.app.describe_split(request.match_info["route"])
        return json_response(answer, status=status)

    async def split(self, request: Request) -> Response:
        """New canary weights for a route, until the next reload: body
        `{"split": [{"pool": "games-v1", "weight": 90}, {"pool": "games-v2", "weight": 10}]}`,
        naming the route's pools in any order."""
        route = request.match_info["route"]
        try:
            body = await request.json()
        except ValueError:
            return json_response({"error": "expected a JSON body"}, status=400)
        weights = _split_weights(body)
        if isinstance(weights, str):
            return json_response({"error": weights}, status=400)
        status, answer = await self.app.set_split(route, weights)
        return json_response(answer, status=status)

    async def reload(self, request: Request) -> Response:
        errors = await self.app.reload_everywhere()
        if errors:
            return json_response({"errors": errors}, status=400)
        return json_response({"result": "reloaded"})


def _split_weights(body: object) -> dict[str, int] | str:
    """pool -> weight from an admin split request; a string says what is wrong with it."""
    sides = body.get("split") if isinstance(body, dict) else None
    if not isinstance(sides, list) or not sides:
        return 'expected {"split": [{"pool": NAME, "weight": N}, ...]}'
    weights: dict[str, int] = {}
    for side in sides:
        pool = side.get("pool") if isinstance(side, dict) else None
        weight = side.get("weight") if isinstance(side, dict) else None
        if not isinstance(pool, str) or isinstance(weight, bool) or not isinstance(weight, int):
            return 'each side is {"pool": NAME, "weight": N} with a whole number N'
        if weight < 0:
            return f"pool {pool}: weight must be 0 or more, got {weight}"
        if pool in weights:
            return f"pool {pool} is given twice"
        weights[pool] = weight
    if not any(weights.values()):
        return "the weights add up to 0; at least one side must have players"
    return weights


# The page's files (balancer/static), read once. The page loads nothing else: no CDN, no
# inline script or style, so the policy below can forbid everything but this origin.
STATIC = {"status.css": "text/css", "status.js": "text/javascript", "favicon.svg": "image/svg+xml"}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
NO_STORE = {"Cache-Control": "no-store"}
_files: dict[str, bytes] = {}


def _same_origin(request: Request) -> bool:
    """No Origin header (not a browser), or the admin listener's own origin."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin == f"{request.scheme}://{request.host}"


def _static_response(name: str) -> Response:
    body = _files.get(name)
    if body is None:
        body = _files[name] = resources.files("balancer").joinpath("static", name).read_bytes()
    content_type = STATIC.get(name, "text/html")
    return Response(body, headers={**PAGE_HEADERS, "Content-Type": f"{content_type}; charset=utf-8"})
