"""The example plugin of docs/plugins.md: a maintenance window for one route.

    plugins:
      - tests.example_plugins.maintenance:Maintenance:
          retry_after: 30m
          bypass_header: X-Staff-Token
          bypass_token_env: STAFF_TOKEN

While it is configured, players get a 503 page with `Retry-After`; staff who send the bypass
header with the right token go through to the backends, and their responses are marked with
`X-Maintenance: bypassed` so nobody mistakes a staff session for a player's.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

from balancer.config_file import parse_duration
from balancer.plugins import Plugin, PluginRequest, PluginResponse, Response

PAGE = b"<!doctype html><title>Back soon</title><h1>The casino is under maintenance.</h1>\n"


@dataclass(frozen=True, slots=True)
class MaintenanceSettings:
    retry_after: int  # whole seconds
    bypass_header: str | None
    bypass_token: str | None


class Maintenance(Plugin):
    def __init__(self, settings: MaintenanceSettings) -> None:
        super().__init__(settings)
        self.retry_after = settings.retry_after
        self.bypass_header = settings.bypass_header
        self.bypass_token = settings.bypass_token

    def on_request(self, request: PluginRequest) -> Response | None:
        if self._is_staff(request):
            return None
        return Response(503, retry_after=self.retry_after, body=PAGE,
                        headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"})

    def on_response(self, request: PluginRequest, response: PluginResponse) -> None:
        # Only staff requests reach a backend while this plugin is on.
        response.headers.set("X-Maintenance", "bypassed")

    def _is_staff(self, request: PluginRequest) -> bool:
        if self.bypass_header is None or self.bypass_token is None:
            return False
        sent = request.headers.get(self.bypass_header)
        return sent is not None and hmac.compare_digest(sent.encode(), self.bypass_token.encode())

    @classmethod
    def parse_settings(cls, raw: object, path: str, errors: list[tuple[str, str]]) -> MaintenanceSettings | None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            errors.append((path, "expected a mapping of settings"))
            return None
        before = len(errors)
        for key in raw:
            if key not in ("retry_after", "bypass_header", "bypass_token_env"):
                errors.append((f"{path}.{key}", "unknown key"))
        try:
            retry_after = round(parse_duration(raw.get("retry_after", "5m")))
        except ValueError as exc:
            errors.append((f"{path}.retry_after", str(exc)))
            retry_after = 0
        header = raw.get("bypass_header")
        if header is not None and not (isinstance(header, str) and header.isascii() and header.strip()):
            errors.append((f"{path}.bypass_header", "expected a header name"))
        token = None
        env = raw.get("bypass_token_env")
        if env is not None:
            token = os.environ.get(str(env)) or None
            if token is None:
                errors.append((f"{path}.bypass_token_env", f"environment variable {env} is not set"))
        if (header is None) != (env is None):
            errors.append((path, "bypass_header and bypass_token_env go together"))
        if len(errors) > before:
            return None
        return MaintenanceSettings(retry_after=retry_after, bypass_header=header, bypass_token=token)
