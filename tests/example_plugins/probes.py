"""Plugins that exercise the protocol's edges in tests: async hooks, failures, odd answers."""

from __future__ import annotations

import asyncio

from balancer.plugins import Plugin, PluginRequest, PluginResponse, Response


class SlowTagger(Plugin):
    """Async on_request: waits (as a lookup in a remote service would), then tags the request."""

    async def on_request(self, request: PluginRequest) -> Response | None:
        await asyncio.sleep(float(self.settings.get("delay", 0.01)))
        if request.headers.get("X-Refuse") == "yes":
            return Response(403, "refused after a lookup")
        request.headers.set("X-Tagged", f"{request.method} {request.path} {request.client_ip}")
        return None


class Describe(Plugin):
    """Echoes what the request view shows into headers the backend and the client see."""

    def on_request(self, request: PluginRequest) -> None:
        request.headers.set("X-View", "|".join([
            request.method, request.path, request.target, request.host, request.scheme,
            request.listener, request.route, str(request.country), str(request.region),
            request.cookie("player") or "-", request.client_ip,
        ]))

    def on_response(self, request: PluginRequest, response: PluginResponse) -> None:
        response.headers.add("X-Seen-Status", str(response.status))
        response.headers.add("X-Backend-Was", response.headers.get("X-Backend") or "-")


class Broken(Plugin):
    """Fails in the hook named by its settings."""

    def on_request(self, request: PluginRequest) -> Response | None:
        if self.settings.get("fail") == "request":
            raise RuntimeError("boom on request")
        if self.settings.get("fail") == "answer":
            return "not a Response"  # type: ignore[return-value]
        if self.settings.get("fail") == "smuggle":
            request.headers.set("Content-Length", "0")
        if self.settings.get("fail") == "inject":
            request.headers.set("X-Evil", "a\r\nX-Admin: 1")
        return None

    def on_response(self, request: PluginRequest, response: PluginResponse) -> None:
        if self.settings.get("fail") == "response":
            raise RuntimeError("boom on response")


class Teapot(Plugin):
    """Answers every request itself with a status and headers from its settings."""

    def on_request(self, request: PluginRequest) -> Response:
        return Response(int(self.settings.get("status", 418)), self.settings.get("message", ""),
                        headers=self.settings.get("headers", {}))
