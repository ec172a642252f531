"""Plugin protocol and loader (docs/plugins.md).

A plugin is a `Plugin` subclass. It is configured per route as a one-key mapping
`{name: settings}`: a built-in name such as `rate_limit` (module `plugins.rate_limit`, whose
`PLUGIN` attribute is the class) or a third-party dotted path `package.module:Class`.
The config loader calls `parse_plugin`, which loads the class and lets it validate its own
settings, so `balancer check` reports plugin mistakes like any other config error. The runtime
builds one set of instances per route and config generation with `build_plugins`.

Both hooks are optional: a class that does not define one leaves it None, and the data plane
skips it without a call, so a route without plugins, or a plugin with one hook, pays nothing
for the rest.

Plugins never see the data plane's own objects. They get a `PluginRequest` (client address,
method, path, host, editable headers, cookies, country, region, request id) and a
`PluginResponse` (status, editable headers): a small view that stays stable while the data
plane changes underneath. docs/plugins.md is the guide for plugin authors.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from .compiled import fields
from .config import PluginConfig
from .grammar import FIELD_VALUE, TOKEN
from .http.errors import answer_bytes, error_answer, reason_phrase
from .sticky import read_cookie

if TYPE_CHECKING:
    from .http.exchange import Exchange
    from .http.parser import RequestHead

log = logging.getLogger("balancer.plugins")

# Where built-in plugins live: the top-level `plugins` package (README.md, "Layout").
BUILTIN_PACKAGE = "plugins"
_BUILTIN_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DOTTED_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

# Framing and hop-by-hop fields: the balancer frames both directions itself, so letting a plugin
# edit these would desynchronise what it sends from what it declares (request smuggling).
FRAMING_HEADERS: frozenset[str] = frozenset({
    "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
    "te", "trailer", "upgrade",
})
# Request fields a plugin may not edit: framing, Host (the route was matched on it), and what
# the balancer itself sets towards the backend after the plugins ran. The request id is
# `PluginRequest.request_id`, which also reaches the balancer's own error answers.
PROTECTED_REQUEST_HEADERS: frozenset[str] = FRAMING_HEADERS | {
    "host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-client-region",
    "x-request-id",
}
PROTECTED_RESPONSE_HEADERS: frozenset[str] = FRAMING_HEADERS
# The same as the lower-case bytes the data plane compares.
_REQUEST_PROTECTED = frozenset(n.encode() for n in PROTECTED_REQUEST_HEADERS)
_RESPONSE_PROTECTED = frozenset(n.encode() for n in PROTECTED_RESPONSE_HEADERS)
_PROTECTED_BYTES: dict[frozenset[str], frozenset[bytes]] = {
    PROTECTED_REQUEST_HEADERS: _REQUEST_PROTECTED,
    PROTECTED_RESPONSE_HEADERS: _RESPONSE_PROTECTED,
}


@dataclass(frozen=True, slots=True)
class Response:
    """An answer a plugin gives in place of the backend's.

    Without `body` the balancer sends it like its own errors: JSON
    `{"error": message, "request_id": ...}` (message defaults to the reason phrase). With
    `body`, that body is sent as is; set its `Content-Type` in `headers`. Either way the
    balancer adds Content-Length, X-Request-Id and Connection, and `Retry-After` when given."""

    status: int  # 200-599; 429, 403, 451...
    message: str = ""
    retry_after: int | None = None  # whole seconds
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = ()
    body: bytes | None = None


RequestHook = Callable[[Any], Union[Awaitable["Response | None"], "Response | None"]]
ResponseHook = Callable[[Any, Any], None]


class Plugin:
    """Base class of every plugin. Define the hooks you need as methods:

    `on_request(self, request)`, plain or async: runs after the route matched and before a
    backend is chosen, in route order; return a `Response` to answer the client yourself
    (the plugins after it do not run), or None to go on. `request` is a `PluginRequest`.
    Prefer a plain method when no I/O is needed: an async one costs a task per request.

    `on_response(self, request, response)`, plain (not async): runs when the backend's response
    head arrives, before it is written to the client; `response` is a `PluginResponse` whose
    headers may be edited. It must not block: the data plane waits for it.
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


# -- what plugins see --------------------------------------------------------------------------


# Header names plugins have used, checked and encoded once (as sent, lower-case): plugins edit
# the same few names on every request. Bounded (cleared when full), so odd names cannot grow it.
_CHECKED_NAMES: dict[str, tuple[bytes, bytes]] = {}


def _checked_name(name: str) -> tuple[bytes, bytes]:
    checked = _CHECKED_NAMES.get(name) if isinstance(name, str) else None
    if checked is None:
        if not isinstance(name, str) or not TOKEN.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        raw_name = name.encode("ascii")
        checked = (raw_name, raw_name.lower())
        if len(_CHECKED_NAMES) >= 1024:
            _CHECKED_NAMES.clear()
        _CHECKED_NAMES[name] = checked
    return checked


def _checked_value(name: str, value: str) -> bytes:
    if not isinstance(value, str) or not FIELD_VALUE.fullmatch(value):
        raise ValueError(f"invalid value for header {name}: {value!r}")
    return value.strip(" \t").encode("latin-1")


def check_field(name: str, value: str | None = None) -> tuple[bytes, bytes]:
    """A header field as bytes; ValueError if the name is not a token or the value could break
    out of its line (CR, LF, NUL...). Values are Latin-1, as HTTP/1.1 carries them."""
    raw_name = _checked_name(name)[0]
    return raw_name, b"" if value is None else _checked_value(name, value)


# A header field checked once, ahead of the requests that use it: (lower-case name, name as
# sent, value), the data plane's own shape. See `prepare_field`.
PreparedField = tuple[bytes, bytes, bytes]


def prepare_field(name: str, value: str = "") -> PreparedField:
    """A field to give `Headers.set_prepared` / `add_prepared` / `remove_prepared` on every
    request: checked here, once (ValueError as `check_field`), so that the per-request edit
    is a list operation. Make it when the plugin is built, not in a hook."""
    raw_name, lname = _checked_name(name)
    return lname, raw_name, _checked_value(name, value)


def _index_of(fields: list[PreparedField], lname: bytes, start: int = 0) -> int:
    """Where the first field named `lname` is, from `start` on; -1 when there is none."""
    for i in range(start, len(fields)):
        field = fields[i]
        if field[0] == lname:
            return i
    return -1


def _refuse(name: str) -> None:
    raise ValueError(f"header {name} cannot be edited by a plugin (framing and hop-by-hop "
                     "headers, Host, and the headers the balancer sets itself are protected)")


class Headers:
    """Header fields as a plugin sees them: names case-insensitive, `str` in and out.

    Wraps the data plane's own list of `(lower-case name, name, value)` byte triples, so an
    edit here is what goes on the wire. Fields in `protected` may be read, not edited."""

    __slots__ = fields(__name__, "Headers")  # its .pxd declares them

    def __init__(self, fields: list[tuple[bytes, bytes, bytes]], protected: frozenset[str]) -> None:
        self._fields = fields
        self._protected = _PROTECTED_BYTES.get(protected) or frozenset(n.encode() for n in protected)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name`, or `default`."""
        lname = name.lower().encode("latin-1")
        for field_name, _, value in self._fields:
            if field_name == lname:
                return value.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        lname = name.lower().encode("latin-1")
        return [value.decode("latin-1") for field_name, _, value in self._fields if field_name == lname]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def items(self) -> list[tuple[str, str]]:
        """Every field in order, as (name as sent, value)."""
        return [(name.decode("latin-1"), value.decode("latin-1")) for _, name, value in self._fields]

    def set(self, name: str, value: str) -> None:
        """Replace every `name` field with one `name: value` (where the first one was)."""
        raw_name, lname = self._editable(name)
        self._set((lname, raw_name, _checked_value(name, value)))

    def add(self, name: str, value: str) -> None:
        """Add a `name: value` field after the existing ones."""
        raw_name, lname = self._editable(name)
        self._fields.append((lname, raw_name, _checked_value(name, value)))
        self._changed(lname)

    def remove(self, name: str) -> None:
        """Remove every `name` field (nothing happens when there is none)."""
        self._remove(self._editable(name)[1])

    # The same edits with a field from `prepare_field`: no name or value to check again.
    def set_prepared(self, field: PreparedField) -> None:
        self._check_editable(field)
        self._set(field)

    def add_prepared(self, field: PreparedField) -> None:
        self._check_editable(field)
        self._fields.append(field)
        self._changed(field[0])

    def remove_prepared(self, field: PreparedField) -> None:
        self._check_editable(field)
        self._remove(field[0])

    def _set(self, field: PreparedField) -> None:
        lname = field[0]
        fields = self._fields
        first = _index_of(fields, lname)
        if first < 0:  # the usual case: a name not there yet
            fields.append(field)
        else:
            fields[first] = field
            if _index_of(fields, lname, first + 1) >= 0:
                fields[first + 1:] = [f for f in fields[first + 1:] if f[0] != lname]
        self._changed(lname)

    def _remove(self, lname: bytes) -> None:
        fields = self._fields
        if _index_of(fields, lname) >= 0:
            fields[:] = [field for field in fields if field[0] != lname]
        self._changed(lname)

    def _editable(self, name: str) -> tuple[bytes, bytes]:
        checked = _checked_name(name)
        if checked[1] in self._protected:
            _refuse(name)
        return checked

    def _check_editable(self, field: PreparedField) -> None:
        if field[0] in self._protected:
            _refuse(field[1].decode("latin-1"))

    def _changed(self, lname: bytes) -> None:
        """Hook for views that keep derived state in step with the fields."""


class _RequestHeaders(Headers):
    __slots__ = fields(__name__, "_RequestHeaders")  # its .pxd declares them

    def __init__(self, head: RequestHead) -> None:
        self._fields = head.headers
        self._protected = _REQUEST_PROTECTED
        self._head = head

    def _changed(self, lname: bytes) -> None:
        if lname == b"cookie":
            # Sticky cookies and `hash_on: cookie:` read the joined Cookie value: keep it true.
            values = [value for name, _, value in self._fields if name == b"cookie"]
            self._head.cookie = b"; ".join(values) if values else None


class PluginRequest:
    """The request as a plugin sees it. Header edits change what is sent to the backend."""

    __slots__ = fields(__name__, "PluginRequest")  # its .pxd declares them

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange
        self._headers: Headers | None = None
        self.client_ip: str = exchange.client.client_ip
        """The client's address: the TCP peer, or the one a trusted PROXY header carried."""

    @property
    def headers(self) -> Headers:
        """The request's header fields (made on first use: most hooks never look)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = _RequestHeaders(self._exchange.head)
        return headers

    @property
    def method(self) -> str:
        return self._exchange.head.method.decode("latin-1")

    @property
    def target(self) -> str:
        """Path and query as sent (`/lobby?table=3`)."""
        return self._exchange.head.target.decode("latin-1")

    @property
    def path(self) -> str:
        """The path without the query."""
        return self._exchange.head.path.decode("latin-1")

    @property
    def host(self) -> str:
        """Lower-case host without the port; "" when the request had none (HTTP/1.0)."""
        return self._exchange.head.host

    @property
    def scheme(self) -> str:
        """"https" on TLS listeners, else "http"."""
        return self._exchange.client.scheme.decode("ascii")

    @property
    def listener(self) -> str:
        return self._exchange.client.listener.name

    @property
    def route(self) -> str:
        route = self._exchange.route
        return route.name if route is not None else ""

    @property
    def country(self) -> str | None:
        """ISO 3166-1 alpha-2 country the balancer decided (trusted header or geo database),
        or None when unknown or when the config has no `geo` section."""
        return self._exchange.country

    @property
    def region(self) -> str | None:
        return self._exchange.region

    @property
    def request_id(self) -> str:
        """The id sent upstream as X-Request-Id and quoted in the balancer's own errors."""
        return self._exchange.request_id

    @request_id.setter
    def request_id(self, value: str) -> None:
        if not isinstance(value, str) or not _REQUEST_ID.fullmatch(value):
            raise ValueError("a request id is 1-128 characters of A-Za-z0-9._-")
        # As a plain str: a subclass (an enum member, say) passes the check above, but the
        # compiled exchange types the field as exactly str (exchange.pxd) and would refuse it.
        self._exchange.request_id = str.__str__(value)

    def cookie(self, name: str) -> str | None:
        """The value of cookie `name` in the request, or None."""
        return read_cookie(self._exchange.head.cookie, name)


class PluginResponse:
    """The backend's response head as a plugin sees it, before it is written to the client.
    The status is read-only; the headers may be edited (framing ones excepted)."""

    __slots__ = fields(__name__, "PluginResponse")  # its .pxd declares them

    def __init__(self, status: int, fields: list[tuple[bytes, bytes, bytes]]) -> None:
        self._status = status
        self.headers = Headers(fields, PROTECTED_RESPONSE_HEADERS)

    @property
    def status(self) -> int:
        return self._status


# The data plane makes a view for every hook call: these skip the constructors' argument
# handling and lookups (in the compiled build, C calls that fill the fields directly).
def request_view(exchange: Exchange, client_ip: str) -> PluginRequest:
    """`PluginRequest(exchange)`, given the client's address the exchange already holds."""
    view = PluginRequest.__new__(PluginRequest)
    view._exchange = exchange
    view._headers = None
    view.client_ip = client_ip
    return view


def response_view(status: int, fields: list[tuple[bytes, bytes, bytes]]) -> PluginResponse:
    """`PluginResponse(status, fields)`."""
    headers = Headers.__new__(Headers)
    headers._fields = fields
    headers._protected = _RESPONSE_PROTECTED
    view = PluginResponse.__new__(PluginResponse)
    view._status = status
    view.headers = headers
    return view


# -- the data plane's side ---------------------------------------------------------------------


class PluginChain(tuple):  # type: ignore[type-arg]
    """A route's plugin instances in order, plus the hooks they define, found once per config
    generation so that the request path never asks a plugin what it implements."""

    names: tuple[str, ...]
    request_hooks: tuple[tuple[str, RequestHook], ...]
    response_hooks: tuple[tuple[str, ResponseHook], ...]

    def __new__(cls, names: Iterable[str], plugins: Iterable[Plugin]) -> PluginChain:
        chain = super().__new__(cls, plugins)
        chain.names = tuple(names)
        chain.request_hooks = tuple((name, p.on_request) for name, p in zip(chain.names, chain)
                                    if p.on_request is not None)
        chain.response_hooks = tuple((name, p.on_response) for name, p in zip(chain.names, chain)
                                     if p.on_response is not None)
        return chain


def answer_parts(answer: Response, request_id: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A plugin's answer as (status, fields, body) for the player's side to frame; ValueError if
    the plugin asked for something that is not a valid HTTP response (a status out of 200-599,
    a header that breaks its line)."""
    status = answer.status
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError(f"a plugin answer needs a status between 200 and 599, got {status!r}")
    fields: list[tuple[bytes, bytes]] = []
    headers = answer.headers.items() if isinstance(answer.headers, Mapping) else answer.headers
    for name, value in headers:
        raw = check_field(name, value)
        # The balancer frames the answer and names the request itself.
        if name.lower() not in FRAMING_HEADERS and name.lower() != "x-request-id":
            fields.append(raw)
    if answer.retry_after is not None:
        fields.append((b"retry-after", b"%d" % max(0, int(answer.retry_after))))
    body = answer.body
    if body is None:
        message = answer.message or reason_phrase(status).decode("latin-1").lower()
        fields = [f for f in fields if f[0].lower() != b"content-type"]
        fields, data = error_answer(status, message, request_id, fields)
        return status, fields, data
    if not isinstance(body, (bytes, bytearray)):
        raise ValueError(f"a plugin answer's body must be bytes, got {type(body).__name__}")
    if status not in (204, 304):
        fields.append((b"content-length", b"%d" % len(body)))
    else:
        body = b""
    fields.append((b"x-request-id", request_id.encode("ascii")))
    return status, fields, bytes(body)


def render_answer(answer: Response, request_id: str, close: bool, head_only: bool) -> bytes:
    """The HTTP/1.1 bytes of a plugin's answer (ValueError as `answer_parts`)."""
    status, fields, body = answer_parts(answer, request_id)
    return answer_bytes(status, fields, body, close, head_only)


# A failing plugin fails every request it sees: log the first failure and then at most one line
# per interval and (route, plugin), with the count in between, so the log stays readable.
FAILURE_LOG_INTERVAL = 60.0
_failures: dict[tuple[str, str], list[float]] = {}


def report_failure(route: str, plugin: str, hook: str, exc: BaseException) -> None:
    key = (route, plugin)
    now = time.monotonic()
    seen = _failures.get(key)
    if seen is None:
        if len(_failures) > 1024:
            _failures.clear()
        seen = _failures[key] = [-FAILURE_LOG_INTERVAL, 0.0]
    seen[1] += 1
    if now - seen[0] >= FAILURE_LOG_INTERVAL:
        log.error("route %s: plugin %s failed in %s (%d failures since the last report): %s: %s",
                  route, plugin, hook, int(seen[1]), type(exc).__name__, exc,
                  exc_info=seen[0] < 0)
        seen[0] = now
        seen[1] = 0.0


# -- loading -----------------------------------------------------------------------------------


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


def build_plugins(route: Any) -> PluginChain | tuple[()]:
    """Instances for a compiled route (one set per config generation, so per-route state such
    as rate-limit buckets lives as long as the config that defined it). A route without
    plugins gets the empty tuple: the data plane's whole cost for it is one truth test."""
    configs = route.config.plugins
    if not configs:
        return ()
    return PluginChain((c.name for c in configs), (create_plugin(c) for c in configs))
