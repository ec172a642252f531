"""Plugin protocol and loader (PRODUCT.md §10).

A plugin is a `Plugin` subclass. It is configured per route as a one-key mapping
`{name: settings}`: a built-in name such as `rate_limit` (module `plugins.rate_limit`, whose
`PLUGIN` attribute is the class) or a third-party dotted path `package.module:Class`.
The config loader calls `parse_plugin`, which loads the class and lets it validate its own
settings, so `balancer check` reports plugin mistakes like any other config error. The runtime
builds one set of instances per route and config generation with `build_plugins`.

Both hooks are optional: a class that does not define one leaves it None, and the data plane
skips it without a call, so a route without plugins, or a plugin with one hook, pays nothing
for the rest.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Union

from .config import PluginConfig

# Where built-in plugins live: the top-level `plugins` package (ARCHITECTURE.md layout).
BUILTIN_PACKAGE = "plugins"
_BUILTIN_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DOTTED_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True, slots=True)
class Response:
    """An answer a plugin gives in place of the backend's. The balancer sends it like its own
    errors: JSON `{"error": message, "request_id": ...}`, plus `Retry-After` when given."""

    status: int  # 429, 403, 451...
    message: str
    retry_after: int | None = None  # whole seconds


RequestHook = Callable[[Any], Union[Awaitable["Response | None"], "Response | None"]]
ResponseHook = Callable[[Any, list[bytes]], None]


class Plugin:
    """Base class of every plugin. Define the hooks you need as methods:

    `on_request(self, request)`, sync or async: runs before a backend is chosen; return a
    `Response` to answer the client yourself, or None to go on. `request` is the data plane's
    per-request object (`balancer.http.exchange.Exchange`).

    `on_response(self, request, response_head)`, plain (not async): runs while the backend's
    response head is written to the client. `response_head` is the list of raw lines about to
    be sent (status line, then `name: value\\r\\n` lines); append to it to add headers.
    """

    on_request: RequestHook | None = None
    on_response: ResponseHook | None = None

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    @classmethod
    def parse_settings(cls, raw: object, path: str, errors: list[tuple[str, str]]) -> object:
        """Validate the settings as written in YAML; append `(path, message)` for each problem.

        The default accepts any mapping (or nothing) and returns it as a dict. Report errors
        below `path` (e.g. f"{path}.rate") so they read like every other config error."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            errors.append((path, f"expected a mapping of settings, got {type(raw).__name__}"))
            return None
        return dict(raw)


class PluginLoadError(Exception):
    """The plugin named in the config cannot be found or is not a `Plugin`."""


def load_plugin_class(name: str) -> type[Plugin]:
    """The class for a built-in name (`rate_limit`) or a dotted path (`package.module:Class`)."""
    if _BUILTIN_NAME.match(name):
        module_name, attribute = f"{BUILTIN_PACKAGE}.{name}", "PLUGIN"
    elif _DOTTED_PATH.match(name):
        module_name, _, attribute = name.partition(":")
    else:
        raise PluginLoadError("unknown plugin (a built-in name, or package.module:Class)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the plugin's own module missing means "unknown"; a missing dependency of an
        # existing plugin is a broken installation and is reported as such.
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise PluginLoadError("unknown plugin") from None
        raise PluginLoadError(f"cannot load plugin: {exc}") from None
    except Exception as exc:  # any error raised while the plugin module runs
        raise PluginLoadError(f"cannot load plugin: {type(exc).__name__}: {exc}") from None
    cls = getattr(module, attribute, None)
    if cls is None:
        raise PluginLoadError(f"unknown plugin: {module_name} has no {attribute}")
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise PluginLoadError(f"{module_name}.{attribute} is not a balancer.plugins.Plugin subclass")
    if inspect.iscoroutinefunction(cls.on_response):
        # The head is written synchronously; an async hook would never run, silently.
        raise PluginLoadError(f"{module_name}.{attribute}.on_response must be a plain method, not async")
    return cls


def parse_plugin(
    name: str, raw: object, path: str, errors: list[tuple[str, str]]
) -> PluginConfig | None:
    """Load plugin `name` and validate its settings `raw`; `path` is the list item's path
    (`routes.N.plugins.M`). Problems go to `errors` at `path.<name>`; None when there were any."""
    at = f"{path}.{name}"
    try:
        cls = load_plugin_class(name)
    except PluginLoadError as exc:
        errors.append((at, str(exc)))
        return None
    errors_before = len(errors)
    try:
        settings = cls.parse_settings(raw, at, errors)
    except Exception as exc:  # a faulty third-party validator must not crash `balancer check`
        errors.append((at, f"plugin failed to check its settings: {type(exc).__name__}: {exc}"))
        return None
    if len(errors) > errors_before:
        return None
    return PluginConfig(name=name, settings=settings)


def create_plugin(config: PluginConfig) -> Plugin:
    """An instance for one route, from a config that `parse_plugin` has already accepted."""
    return load_plugin_class(config.name)(config.settings)


def build_plugins(route: Any) -> tuple[Plugin, ...]:
    """Instances for a compiled route (one set per config generation, so per-route state such
    as rate-limit buckets lives as long as the config that defined it)."""
    return tuple(create_plugin(config) for config in route.config.plugins)
