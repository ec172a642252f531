"""The config file: YAML -> the frozen dataclasses of balancer/config.py, every error with its
dotted key path.

`load_config(path)` returns a `Config` or raises `ConfigError` carrying *every* problem found,
each as `(dotted.key.path, message)`, so `balancer check` can list them all at once.
`parse_config(data, source)` does the same for data already read; `check_main(path)` is the
body of `balancer check`.

The loader is a set of small parsers, one per key. A `_Section` pops the keys it knows from a
mapping, each with its parser and default, and reports whatever is left as unknown keys: a typo
must never silently fall back to a default (docs/configuration.md). Parsers raise `_Invalid` for the
value at their own path, or record deeper errors themselves, and parsing always goes on so that
one run lists every problem. After an error the values returned are placeholders only; the
config is then never built.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union, get_args
from urllib.parse import urlsplit

import yaml

from .config import (
    AccessLogConfig,
    Address,
    AdminConfig,
    BackendConfig,
    BalanceName,
    ClientCertificateMatch,
    ClientCertificateMode,
    Config,
    ConfigError,
    ConsulCheck,
    ConsulConfig,
    ConsulDiscoveryConfig,
    ConsulRegister,
    GeoConfig,
    HealthCheckConfig,
    IPNetwork,
    Limits,
    ListenerConfig,
    MIRROR_IN_FLIGHT,
    MatchConfig,
    MirrorConfig,
    OnFailure,
    OutlierConfig,
    PluginConfig,
    PoolConfig,
    RetryCondition,
    RetryConfig,
    RouteConfig,
    SplitCookieConfig,
    SplitSide,
    StickyConfig,
    Timeouts,
    TlsConfig,
    UpstreamTlsConfig,
)
from .plugins import parse_plugin

from .grammar import TOKEN
from .http.headers import OWN_REQUEST_HEADERS

# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_config(path: str) -> Config:
    """Read and validate the YAML file at `path`; raise `ConfigError` listing every problem."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError(path, [("(file)", f"cannot read: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise ConfigError(path, [("(file)", "is not UTF-8 text")]) from None
    loader = _YamlLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(path, [_yaml_error(exc)]) from None
    finally:
        loader.dispose()
    try:
        config = parse_config(data, path)
    except ConfigError as exc:
        raise ConfigError(path, loader.duplicates + exc.errors) from None
    if loader.duplicates:
        raise ConfigError(path, loader.duplicates)
    return config


def parse_config(data: object, source: str) -> Config:
    """Validate already-parsed YAML data. Relative file paths resolve against `source`'s folder."""
    if data is None:
        raise ConfigError(source, [("(file)", "is empty; a config needs listeners, routes and pools")])
    if not isinstance(data, dict):
        raise ConfigError(source, [("(file)", f"expected a mapping at the top level, got {show_value(data)}")])
    ctx = _Context(base_dir=os.path.dirname(os.path.abspath(source)))
    section = _Section(data, "", ctx)
    config = _config(section, source)
    section.finish()
    _check_references(ctx, config)
    if ctx.errors:
        raise ConfigError(source, ctx.errors)
    return config


def check_main(path: str) -> int:
    """`balancer check`: every error on stderr as `FILE: dotted.path: message`, exit status 2."""
    try:
        load_config(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 2
    print(f"{path}: ok")
    return 0


class _YamlLoader(yaml.SafeLoader):
    """`yaml.safe_load` with two changes that keep YAML 1.1 from silently rewriting a config.

    - Only true/false are booleans (YAML 1.2). YAML 1.1 also reads yes/no/on/off as booleans,
      which turns the `on:` key of `retries` into `True` and Norway's country code NO into false.
    - A key repeated in one mapping is an error. PyYAML keeps the last one, so a second `pools:`
      or two pools of the same name would silently replace the first.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` keys may legitimately be overridden by explicit ones
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:
                continue  # an unhashable key: the base constructor reports it
            if repeated:
                self.duplicates.append((f"line {key_node.start_mark.line + 1}", f"duplicate key {key!r}"))
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _yaml_error(exc: yaml.YAMLError) -> tuple[str, str]:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return "(file)", f"invalid YAML: {problem}"
    return f"line {mark.line + 1}", f"invalid YAML: {problem} (column {mark.column + 1})"


# --------------------------------------------------------------------------------------------
# Parsing machinery
# --------------------------------------------------------------------------------------------

T = TypeVar("T")


class _Invalid(ValueError):
    """The value at the parser's own path cannot be used; the message says why."""


@dataclass(slots=True)
class _Context:
    base_dir: str  # relative file paths in the config are relative to the config file
    errors: list[tuple[str, str]] = field(default_factory=list)
    # Checked once everything is read, because the things they name may come later in the file.
    pool_refs: list[tuple[str, str]] = field(default_factory=list)  # (path, pool name)
    pool_names: set[str] = field(default_factory=set)  # every pool declared, valid or not
    region_refs: list[tuple[str, str]] = field(default_factory=list)  # (path, region)
    geo_pools: list[str] = field(default_factory=list)  # paths of `geo: true`

    def error(self, path: str, message: str) -> None:
        self.errors.append((path, message))


# A parser turns the raw YAML value at `path` into a config value.
Parse = Callable[[object, str, _Context], T]

_REQUIRED: Any = object()


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _run(parse: Parse[T], raw: object, path: str, ctx: _Context, fallback: Any) -> T:
    try:
        return parse(raw, path, ctx)
    except _Invalid as exc:
        ctx.error(path, str(exc))
        return fallback


class _Section:
    """Reads one mapping: each key taken once with its parser; leftovers are unknown keys."""

    __slots__ = ("_raw", "path", "ctx", "failed", "_consumed")

    def __init__(self, raw: dict[Any, Any], path: str, ctx: _Context) -> None:
        self._raw = dict(raw)
        self.path = path
        self.ctx = ctx
        self.failed: set[str] = set()  # keys with an error at or below them
        self._consumed: set[str] = set()  # keys given in the file (taken so far)

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def take(self, key: str, parse: Parse[T], default: Any = _REQUIRED) -> T:
        """The parsed value of `key`; its default when absent. Null is accepted where the
        default is null (an optional feature left off)."""
        if key not in self._raw:
            if default is _REQUIRED:
                self.ctx.error(self.at(key), "required key is missing")
                return None  # type: ignore[return-value]
            return default  # type: ignore[no-any-return]
        raw = self._raw.pop(key)
        self._consumed.add(key)
        if raw is None and default is None:
            return None  # type: ignore[return-value]
        errors_before = len(self.ctx.errors)
        value = _run(parse, raw, self.at(key), self.ctx, None if default is _REQUIRED else default)
        if len(self.ctx.errors) > errors_before:
            self.failed.add(key)
        return value

    def error(self, key: str, message: str) -> None:
        self.ctx.error(self.at(key), message)

    def given(self, key: str) -> bool:
        """Is `key` in the file (taken already or not)?"""
        return key in self._raw or key in self._consumed

    def finish(self) -> None:
        for key in self._raw:
            self.ctx.error(self.at(str(key)), "unknown key")


def _mapping(build: Callable[[_Section], T]) -> Parse[T]:
    """A nested section. Null reads as empty: a section whose keys are all commented out."""

    def parse(raw: object, path: str, ctx: _Context) -> T:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise _Invalid(f"expected a mapping, got {show_value(raw)}")
        section = _Section(raw, path, ctx)
        result = build(section)
        section.finish()
        return result

    return parse


def _list_of(item: Parse[T], *, non_empty: bool = False, unique: str | None = None) -> Parse[tuple[T, ...]]:
    """A list; items report errors at `path.INDEX`. `unique` names an attribute that must
    differ between items (a listener name, a backend id)."""

    def parse(raw: object, path: str, ctx: _Context) -> tuple[T, ...]:
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise _Invalid(f"expected a list, got {show_value(raw)}")
        if non_empty and not raw:
            raise _Invalid("must not be empty")
        values: list[T] = []
        first_at: dict[object, str] = {}
        for index, value in enumerate(raw):
            at = _join(path, str(index))
            parsed = _run(item, value, at, ctx, None)
            if parsed is None:
                continue
            values.append(parsed)
            key = getattr(parsed, unique) if unique else None
            if key is None:
                continue
            if key in first_at:
                ctx.error(_join(at, unique or ""), f"duplicate {unique} {key!r}, also at {first_at[key]}")
            else:
                first_at[key] = at
        return tuple(values)

    return parse


def _map_of(value: Parse[T], key: Callable[[object], str] | None = None) -> Parse[dict[str, T]]:
    """A mapping of names to values; `key` validates and normalises each name."""

    def parse(raw: object, path: str, ctx: _Context) -> dict[str, T]:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise _Invalid(f"expected a mapping, got {show_value(raw)}")
        result: dict[str, T] = {}
        for raw_name, raw_value in raw.items():
            at = _join(path, str(raw_name))
            try:
                name = key(raw_name) if key else _string(raw_name)
            except _Invalid as exc:
                ctx.error(at, str(exc))
                continue
            if name in result:
                ctx.error(at, f"{name!r} is given twice")
                continue
            parsed = _run(value, raw_value, at, ctx, None)
            if parsed is not None:
                result[name] = parsed
        return result

    return parse


def _scalar(convert: Callable[[object], T]) -> Parse[T]:
    """Lift a plain converter (which needs no path) to a parser."""
    return lambda raw, path, ctx: convert(raw)


def show_value(raw: object) -> str:
    """A value as the operator wrote it, short enough for one error line.

    Public so that plugins word the values in their settings errors the same way."""
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, dict):
        return "a mapping"
    if isinstance(raw, list):
        return "a list"
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------------
# Scalar converters: each returns the config value or raises _Invalid
# --------------------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# RFC 9110 token: what a header name, method or cookie name may be made of.
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Pool names and backend ids appear in /admin/pools/{pool}/backends/{id} URLs and metric labels.
_ID = re.compile(r"^[A-Za-z0-9._:-]+$")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$", re.IGNORECASE)
_HOST_PATTERN = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")
# The accepted words are the Literal types' own, so the two cannot drift apart.
_BALANCES = get_args(BalanceName)
_ON_FAILURE = get_args(OnFailure)
_CLIENT_CERTIFICATE = get_args(ClientCertificateMode)
_RETRY_CONDITIONS = get_args(RetryCondition)
_CONSUL_MAX_WAIT = "10m"  # Consul caps a blocking query's wait there


def _string(raw: object) -> str:
    if not isinstance(raw, str):
        raise _Invalid(f"expected a string, got {show_value(raw)}")
    if not raw.strip():
        raise _Invalid("must not be empty")
    return raw


def _bool(raw: object) -> bool:
    if not isinstance(raw, bool):
        raise _Invalid(f"expected true or false, got {show_value(raw)}")
    return raw


def _int(minimum: int, maximum: int | None = None) -> Callable[[object], int]:
    def convert(raw: object) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise _Invalid(f"expected an integer, got {show_value(raw)}")
        if raw < minimum or (maximum is not None and raw > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise _Invalid(f"must be {bound}, got {raw}")
        return raw

    return convert


def parse_duration(raw: object, *, allow_zero: bool = False) -> float:
    """ "500ms", "2s", "1.5s", "5m", "1h" -> seconds; a bare 0 needs no unit. ValueError if bad.

    Public so that plugins validate their own durations the same way."""
    if (raw == 0 and not isinstance(raw, bool)) or raw == "0":
        seconds = 0.0
    elif isinstance(raw, str) and (match := _DURATION.match(raw.strip())):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise _Invalid(f"expected a duration with a unit (ms, s, m, h) like '2s', got {show_value(raw)}")
    if seconds == 0 and not allow_zero:
        raise _Invalid("must be longer than 0")
    return seconds


def _duration(*, allow_zero: bool = False, maximum: str | None = None) -> Callable[[object], float]:
    limit = parse_duration(maximum) if maximum else math.inf

    def convert(raw: object) -> float:
        seconds = parse_duration(raw, allow_zero=allow_zero)
        if seconds > limit:
            raise _Invalid(f"must be at most {maximum}, got {show_value(raw)}")
        return seconds

    return convert


def _choice(*options: str) -> Callable[[object], str]:
    def convert(raw: object) -> str:
        if raw not in options:
            raise _Invalid(f"expected one of {', '.join(options)}; got {show_value(raw)}")
        return raw  # type: ignore[return-value]

    return convert


def _env_name(raw: object) -> str:
    name = _string(raw)
    if not _ENV_NAME.match(name):
        raise _Invalid(f"expected an environment variable name, got {show_value(raw)}")
    return name


def _token(what: str) -> Callable[[object], str]:
    def convert(raw: object) -> str:
        name = _string(raw)
        if not TOKEN.fullmatch(name):
            raise _Invalid(f"expected a {what} (letters, digits and !#$%&'*+.^_`|~-), got {show_value(raw)}")
        return name

    return convert


_header_name = _token("header name")


def _id(raw: object) -> str:
    name = _string(raw)
    if not _ID.match(name):
        raise _Invalid(f"may only hold letters, digits, '.', '_', ':' and '-', got {show_value(raw)}")
    return name


def _http_path(raw: object) -> str:
    path = _string(raw)
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise _Invalid(f"expected a path starting with '/', got {show_value(raw)}")
    return path


def _address(*, allow_port_zero: bool) -> Callable[[object], Address]:
    """ "host:port", "0.0.0.0:8080", "[::]:8080". Port 0 lets the OS choose (listeners only)."""

    def convert(raw: object) -> Address:
        if not isinstance(raw, str):
            raise _Invalid(f"expected host:port, got {show_value(raw)}")
        if raw.startswith("["):
            host, bracket, port = raw[1:].partition("]:")
            if not bracket:
                raise _Invalid(f"expected [IPv6]:port, got {show_value(raw)}")
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise _Invalid(f"{host!r} is not an IPv6 address") from None
        else:
            host, colon, port = raw.rpartition(":")
            if not colon or not host:
                raise _Invalid(f"expected host:port, got {show_value(raw)}")
            if ":" in host:
                raise _Invalid(f"write an IPv6 address in brackets, like [::1]:8080; got {show_value(raw)}")
            _check_host(host)
        if not (port.isascii() and port.isdigit()):
            raise _Invalid(f"port must be a number, got {show_value(raw)}")
        lowest = 0 if allow_port_zero else 1
        if not lowest <= int(port) <= 65535:
            raise _Invalid(f"port must be between {lowest} and 65535, got {int(port)}")
        return Address(host, int(port))

    return convert


def _check_host(host: str) -> None:
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise _Invalid(f"{host!r} is not an IPv4 address") from None
    elif not _HOSTNAME.match(host):
        raise _Invalid(f"{host!r} is not a host name")


def _network(raw: object) -> IPNetwork:
    text = _string(raw)
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    # Host bits set (10.0.0.5/8) usually means a typo; trusting a wider network than meant
    # would let anyone there forge X-Forwarded-For, so say so rather than widen silently.
    try:
        wider = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _Invalid(f"expected an IP address or CIDR network, got {show_value(raw)}") from None
    raise _Invalid(f"{text} has host bits set; did you mean {wider}?")


def _workers(raw: object) -> int | Literal["auto"]:
    if raw == "auto":
        return "auto"
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise _Invalid(f"expected a positive integer or \"auto\", got {show_value(raw)}")
    return raw


def _country(raw: object) -> str:
    if isinstance(raw, str) and len(raw) == 2 and raw.isascii() and raw.isalpha():
        return raw.upper()
    raise _Invalid(f"expected a two-letter country code (ISO 3166-1 alpha-2), got {show_value(raw)}")


def _route_host(raw: object) -> str:
    host = _string(raw).lower().rstrip(".")
    if ":" in host:
        raise _Invalid(f"give the host without a port (matching ignores the port), got {show_value(raw)}")
    if not _HOST_PATTERN.match(host):
        raise _Invalid(f"expected a host like live.example.com or *.example.com, got {show_value(raw)}")
    return host


def _method(raw: object) -> str:
    return _token("method")(raw).upper()


def _header_value(raw: object) -> str:
    # An unquoted number in YAML is an int; the operator meant the header's text.
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    if not isinstance(raw, str):
        raise _Invalid(f"expected a string, got {show_value(raw)}")
    return raw


def _hash_on(raw: object) -> str:
    text = _string(raw)
    if text == "client_ip":
        return text
    kind, colon, name = text.partition(":")
    if colon and name and kind in ("header", "cookie") and TOKEN.fullmatch(name):
        # Header names are case-insensitive: lower-case once here, like route match headers.
        return f"header:{name.lower()}" if kind == "header" else text
    if colon and name and kind == "query":
        return text
    raise _Invalid(f"expected header:NAME, cookie:NAME, query:NAME or client_ip; got {show_value(raw)}")


def _balance_factor(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise _Invalid(f"expected a number, got {show_value(raw)}")
    if raw != 0 and raw <= 1:
        raise _Invalid(f"must be 0 (off) or greater than 1, like 1.25; got {raw}")
    return float(raw)


def _expect_status(raw: object) -> tuple[int, int]:
    text = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if isinstance(text, str) and (match := re.fullmatch(r"(\d{3})(?:-(\d{3}))?", text.strip())):
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if 100 <= low <= high <= 599:
            return low, high
    raise _Invalid(f"expected a status like 200 or a range like 200-399, got {show_value(raw)}")


def _retry_condition(raw: object) -> str:
    # YAML reads an unquoted 502 as an int; conditions are compared as strings.
    text = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if text not in _RETRY_CONDITIONS:
        raise _Invalid(f"expected one of {', '.join(_RETRY_CONDITIONS)}; got {show_value(raw)}")
    return text  # type: ignore[return-value]


def _region_from(raw: object) -> str:
    text = _string(raw)
    kind, colon, rest = text.partition(":")
    if not (colon and rest and kind in ("meta", "tag")):
        raise _Invalid(f"expected meta:KEY or tag:PREFIX, got {show_value(raw)}")
    return text


def _weight_from(raw: object) -> str | None:
    if raw is None or raw == "weights":
        return raw  # type: ignore[return-value]
    raise _Invalid(f"expected weights (Consul Service.Weights.Passing) or null (weight 1), got {show_value(raw)}")


def _consul_url(raw: object) -> str:
    text = _string(raw)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid(f"expected an http:// or https:// URL, got {show_value(raw)}")
    return text


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _readable_file(raw: object, path: str, ctx: _Context) -> str:
    """A file path, relative ones against the config file's folder; returned absolute."""
    name = os.path.join(ctx.base_dir, os.path.expanduser(_string(raw)))
    name = os.path.abspath(name)
    if not os.path.isfile(name):
        raise _Invalid(f"no such file: {name}")
    if not os.access(name, os.R_OK):
        raise _Invalid(f"not readable: {name}")
    return name


def _maxmind_file(raw: object, path: str, ctx: _Context) -> str:
    name = _readable_file(raw, path, ctx)
    import maxminddb  # only for configs with a geo database

    try:
        maxminddb.open_database(name).close()
    except Exception as exc:  # the reader raises several kinds for a damaged file
        raise _Invalid(f"not a MaxMind database: {exc}") from None
    return name


def _key_pair_problem(certificate: str, key: str) -> str | None:
    """Load the pair now, so `balancer check` finds a wrong key before a listener is bound."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An empty password makes an encrypted key fail here instead of prompting on a tty.
        context.load_cert_chain(certificate, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        return f"cannot use this certificate and key: {exc}"
    return None


# --------------------------------------------------------------------------------------------
# Sections, top to bottom as in docs/configuration.md. `d` is the dataclass with its defaults.
# --------------------------------------------------------------------------------------------


def _config(s: _Section, source: str) -> Config:
    listeners = s.take("listeners", _list_of(_mapping(_listener), non_empty=True, unique="name"))
    admin = s.take("admin", _mapping(_admin), AdminConfig())
    workers = s.take("workers", _scalar(_workers), 1)
    shutdown_timeout = s.take("shutdown_timeout", _scalar(_duration()), 30.0)
    trusted_proxies = s.take("trusted_proxies", _list_of(_scalar(_network)), ())
    limits = s.take("limits", _mapping(_limits), Limits())
    geo = s.take("geo", _mapping(_geo), None)
    consul = s.take("consul", _mapping(_consul), None)
    access_log = s.take("access_log", _mapping(_access_log), None)
    log_format = s.take("log_format", _scalar(_choice("text", "json")), "text")
    routes = s.take("routes", _list_of(_mapping(_route), non_empty=True, unique="name"))
    pools = s.take("pools", _pools)
    _check_split_cookies(s, routes or (), pools or {})
    if consul is None and any(pool.discovery for pool in (pools or {}).values()):
        consul = ConsulConfig()  # discovery without a consul section: the documented defaults
    return Config(
        listeners=listeners, routes=routes, pools=pools, admin=admin, workers=workers,
        shutdown_timeout=shutdown_timeout, trusted_proxies=trusted_proxies, limits=limits,
        geo=geo, consul=consul, access_log=access_log, log_format=log_format, source=source,
    )


def _check_split_cookies(s: _Section, routes: tuple[RouteConfig, ...], pools: dict[str, PoolConfig]) -> None:
    """Cookies of one name are read alike (same name, same signing), so within a split:
    - the split cookie must not be a side's sticky cookie (it would be read as one);
    - the sides' sticky cookies must differ, or a player who moves side (a weight change, a
      side without backends) would bring one side's cookie to the other, which knows none of
      its backends: a 503 under on_failure: fail, a lost game server on the way back."""
    for index, route in enumerate(routes):
        if not route.split:
            continue
        sticky_owner: dict[str, str] = {}
        for number, side in enumerate(route.split):
            pool = pools.get(side.pool)
            if pool is None or pool.sticky is None:
                continue
            cookie = pool.sticky.cookie
            if route.split_on == "cookie" and cookie == route.split_cookie.name:
                s.error(f"routes.{index}.split_cookie.name",
                        f"{cookie} is the sticky cookie of pool {side.pool}; give the split its own")
            if cookie in sticky_owner:
                s.error(f"routes.{index}.split.{number}.pool",
                        f"pools {sticky_owner[cookie]} and {side.pool} both name their sticky cookie "
                        f"{cookie}; give each side of a split its own cookie name")
            sticky_owner.setdefault(cookie, side.pool)


def _check_references(ctx: _Context, config: Config) -> None:
    """Names that point elsewhere in the file, checked once the whole file is read. Skipped
    when the section they point into is itself missing or broken: that has its own error."""
    if config.pools is not None:
        for path, pool in ctx.pool_refs:
            if pool not in ctx.pool_names:
                ctx.error(path, f"no pool named {pool!r} under pools")
    regions = config.geo.regions if config.geo else {}
    if not regions:
        for path in ctx.geo_pools:
            ctx.error(path, "geo: true needs a top-level geo section with regions")
        return
    for path, region in ctx.region_refs:
        if region not in regions:
            ctx.error(path, f"unknown region {region!r} (not in geo.regions)")


def _listener(s: _Section) -> ListenerConfig:
    tls = s.take("tls", _mapping(_tls), None)
    return ListenerConfig(
        name=s.take("name", _scalar(_string)),
        address=s.take("address", _scalar(_address(allow_port_zero=True))),
        tls=tls,
        proxy_protocol=s.take("proxy_protocol", _scalar(_bool), False),
        # On by default where ALPN negotiates it; cleartext h2c only when asked for.
        http2=s.take("http2", _scalar(_bool), tls is not None),
    )


def _tls(s: _Section) -> TlsConfig:
    certificate, key = _key_pair(s)
    sni = s.take("sni", _map_of(_mapping(_key_pair), key=_route_host), {})
    client_ca = s.take("client_ca", _ca_file, None)
    mode = s.take("client_certificate", _scalar(_choice(*_CLIENT_CERTIFICATE)), None)
    if client_ca is not None and mode is None and "client_certificate" not in s.failed:
        s.error("client_certificate", "required with client_ca: say `required` or `optional`")
    if mode is not None and client_ca is None and "client_ca" not in s.failed:
        s.error("client_ca", "required with client_certificate: the CA bundle players' "
                             "certificates are verified against")
    return TlsConfig(
        certificate=certificate,
        key=key,
        sni=tuple((server_name, *pair) for server_name, pair in sni.items()),
        client_ca=client_ca,
        client_certificate=mode,
    )


def _upstream_tls(s: _Section) -> UpstreamTlsConfig:
    d = UpstreamTlsConfig()
    ca = s.take("ca", _ca_file, None)
    server_name = s.take("server_name", _scalar(_server_name), None)
    certificate = s.take("certificate", _readable_file, None)
    key = s.take("key", _readable_file, None)
    if (certificate is None) != (key is None) and not s.failed & {"certificate", "key"}:
        missing = "key" if key is None else "certificate"
        s.error(missing, "required with " + ("certificate" if key is None else "key")
                + ": a client certificate and its key go together")
    elif certificate and key and (problem := _key_pair_problem(certificate, key)):
        s.ctx.error(s.path, problem)
    return UpstreamTlsConfig(
        ca=ca, server_name=server_name, certificate=certificate, key=key,
        verify=s.take("verify", _scalar(_bool), d.verify),
    )


def _ca_file(raw: object, path: str, ctx: _Context) -> str:
    """A PEM bundle of CA certificates, checked to load."""
    name = _readable_file(raw, path, ctx)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=name)
    except (ssl.SSLError, OSError) as exc:
        raise _Invalid(f"cannot use this CA bundle: {exc}") from None
    return name


def _server_name(raw: object) -> str:
    name = _string(raw).lower().rstrip(".")
    if not _HOSTNAME.match(name):
        raise _Invalid(f"expected a host name like games.internal, got {show_value(raw)}")
    return name


def _key_pair(s: _Section) -> tuple[str, str]:
    certificate = s.take("certificate", _readable_file)
    key = s.take("key", _readable_file)
    if certificate and key and (problem := _key_pair_problem(certificate, key)):
        s.ctx.error(s.path, problem)
    return certificate, key


def _admin(s: _Section) -> AdminConfig:
    d = AdminConfig()
    return AdminConfig(
        address=s.take("address", _scalar(_address(allow_port_zero=True)), d.address),
        token_env=s.take("token_env", _scalar(_env_name), d.token_env),
    )


def _limits(s: _Section) -> Limits:
    d = Limits()
    positive = _scalar(_int(1))
    duration = _scalar(_duration())
    return Limits(
        max_url_bytes=s.take("max_url_bytes", positive, d.max_url_bytes),
        max_header_bytes=s.take("max_header_bytes", positive, d.max_header_bytes),
        max_response_header_bytes=s.take("max_response_header_bytes", positive,
                                         d.max_response_header_bytes),
        max_header_count=s.take("max_header_count", positive, d.max_header_count),
        max_body_bytes=s.take("max_body_bytes", positive, d.max_body_bytes),
        header_timeout=s.take("header_timeout", duration, d.header_timeout),
        client_idle_timeout=s.take("client_idle_timeout", duration, d.client_idle_timeout),
        max_connections=s.take("max_connections", positive, d.max_connections),
        min_body_rate=s.take("min_body_rate", _scalar(_int(0)), d.min_body_rate),
        max_concurrent_streams=s.take("max_concurrent_streams", positive, d.max_concurrent_streams),
    )


def _geo(s: _Section) -> GeoConfig:
    d = GeoConfig()
    country_header = s.take("country_header", _scalar(_header_name), d.country_header)
    database = s.take("database", _maxmind_file, None)
    regions = s.take("regions", _map_of(_list_of(_scalar(_country))), {})
    # Parsers closed over `regions` check each name in place, so errors carry the list index.
    region = _known_region(regions)
    fallback = s.take("fallback", _map_of(_list_of(_scalar(region)), key=region), {})
    default_region = s.take("default_region", _scalar(region), None)
    pinned = s.take("pinned_countries", _list_of(_scalar(_regional_country(regions))), ())
    blocked = s.take("blocked_countries", _list_of(_scalar(_country)), ())
    _check_geo(s, regions, fallback)
    return GeoConfig(
        country_header=country_header, database=database, regions=regions, fallback=fallback,
        default_region=default_region, pinned_countries=frozenset(pinned),
        blocked_countries=frozenset(blocked),
    )


def _known_region(regions: dict[str, tuple[str, ...]]) -> Callable[[object], str]:
    def convert(raw: object) -> str:
        name = _string(raw)
        if name not in regions:
            raise _Invalid(f"unknown region {name!r} (not in geo.regions)")
        return name

    return convert


def _regional_country(regions: dict[str, tuple[str, ...]]) -> Callable[[object], str]:
    def convert(raw: object) -> str:
        country = _country(raw)
        if not any(country in countries for countries in regions.values()):
            raise _Invalid(f"{country} is in no region; a pinned country must be in geo.regions")
        return country

    return convert


def _check_geo(
    s: _Section, regions: dict[str, tuple[str, ...]], fallback: dict[str, tuple[str, ...]]
) -> None:
    owner: dict[str, str] = {}
    for region, countries in regions.items():
        for country in countries:
            if owner.setdefault(country, region) != region:
                s.error(f"regions.{region}", f"{country} is already in region {owner[country]}")
    for region, targets in fallback.items():
        if region in targets:
            s.error(f"fallback.{region}", "a region cannot fall back to itself")


def _access_log(s: _Section) -> AccessLogConfig:
    d = AccessLogConfig()
    return AccessLogConfig(
        path=s.take("path", _log_path, d.path),
        format=s.take("format", _scalar(_choice("json", "combined")), d.format),
        sample=s.take("sample", _scalar(_share), d.sample),
        min_duration=s.take("min_duration", _scalar(_duration(allow_zero=True)), d.min_duration),
        client_ip=s.take("client_ip", _scalar(_choice("full", "truncated")), d.client_ip),
    )


def _share(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw <= 1:
        raise _Invalid(f"expected a number from 0 to 1, got {show_value(raw)}")
    return float(raw)


def _log_path(raw: object, path: str, ctx: _Context) -> str:
    """stdout, stderr, udp://host:port, unix:///path, or a file (relative ones against the
    config file's folder, returned absolute) in a folder that exists and may be written."""
    text = _string(raw)
    if text in ("stdout", "stderr"):
        return text
    if text.startswith("udp://"):
        _address(allow_port_zero=False)(text[len("udp://"):])
        return text
    if text.startswith("unix://"):
        socket_path = text[len("unix://"):]
        if not socket_path.startswith("/"):
            raise _Invalid(f"expected unix:///absolute/path, got {show_value(raw)}")
        return text
    if "://" in text:
        raise _Invalid(f"expected stdout, stderr, a file path, udp://host:port or unix:///path; got {show_value(raw)}")
    name = os.path.abspath(os.path.join(ctx.base_dir, os.path.expanduser(text)))
    folder = os.path.dirname(name)
    if os.path.isdir(name):
        raise _Invalid(f"is a directory: {name}")
    if not os.path.isdir(folder):
        raise _Invalid(f"no such directory: {folder}")
    if not os.access(folder if not os.path.exists(name) else name, os.W_OK):
        raise _Invalid(f"not writable: {name if os.path.exists(name) else folder}")
    return name


def _consul(s: _Section) -> ConsulConfig:
    d = ConsulConfig()
    return ConsulConfig(
        address=s.take("address", _scalar(_consul_url), d.address),
        token_env=s.take("token_env", _scalar(_env_name), d.token_env),
        datacenter=s.take("datacenter", _scalar(_string), None),
        wait=s.take("wait", _scalar(_duration(maximum=_CONSUL_MAX_WAIT)), d.wait),
        register=s.take("register", _mapping(_consul_register), None),
    )


def _consul_register(s: _Section) -> ConsulRegister:
    return ConsulRegister(
        service=s.take("service", _scalar(_string)),
        check=s.take("check", _mapping(_consul_check), ConsulCheck()),
    )


def _consul_check(s: _Section) -> ConsulCheck:
    d = ConsulCheck()
    return ConsulCheck(
        http=s.take("http", _scalar(_http_path), d.http),
        interval=s.take("interval", _scalar(_duration()), d.interval),
    )


def _route(s: _Section) -> RouteConfig:
    name = s.take("name", _scalar(_string))
    match = s.take("match", _mapping(_match), MatchConfig())
    has_split = s.given("split")
    pool = s.take("pool", _scalar(_string), None if has_split else _REQUIRED)
    if pool is not None:
        s.ctx.pool_refs.append((s.at("pool"), pool))
        if has_split:
            s.error("pool", "give either pool or split, not both")
    split = s.take("split", _split_sides, ())
    split_on = s.take("split_on", _scalar(_split_on), "cookie")
    split_cookie = s.take("split_cookie", _mapping(_split_cookie), SplitCookieConfig())
    if not has_split:
        for key in ("split_on", "split_cookie"):
            if s.given(key):
                s.error(key, "only has a meaning with split")
    mirror = s.take("mirror", _mapping(_mirror), None)
    if mirror is not None and mirror.pool in ((pool,) if pool else tuple(side.pool for side in split)):
        s.error("mirror.pool", "is a pool that serves this route; mirror to another pool")
    plugins = s.take("plugins", _list_of(_plugin), ())
    return RouteConfig(name=name, pool=pool, match=match, plugins=plugins, split=split,
                       split_on=split_on, split_cookie=split_cookie, mirror=mirror)


def _split_sides(raw: object, path: str, ctx: _Context) -> tuple[SplitSide, ...]:
    sides = _list_of(_mapping(_split_side))(raw, path, ctx)
    if not isinstance(raw, list) or len(raw) < 2:
        raise _Invalid("expected a list of at least two {pool, weight}")
    seen: dict[str, int] = {}
    for index, side in enumerate(sides):
        if side.pool in seen:
            ctx.error(_join(path, f"{index}.pool"), f"pool {side.pool!r} is already at {path}.{seen[side.pool]}")
        seen.setdefault(side.pool, index)
    if len(sides) == len(raw) and not any(side.weight for side in sides):
        raise _Invalid("the weights add up to 0; at least one side must have players")
    return sides


def _split_side(s: _Section) -> SplitSide:
    pool = s.take("pool", _scalar(_string))
    if pool is not None:
        s.ctx.pool_refs.append((s.at("pool"), pool))
    return SplitSide(pool=pool, weight=s.take("weight", _scalar(_int(0))))


def _split_on(raw: object) -> str:
    text = _string(raw)
    if text == "cookie":
        return text
    kind, colon, key = text.partition(":")
    if kind == "hash" and colon:
        try:
            return f"hash:{_hash_on(key)}"
        except _Invalid:
            pass
    raise _Invalid("expected cookie, or hash: with header:NAME, cookie:NAME, query:NAME or client_ip "
                   f"(hash:header:X-Player-Id); got {show_value(raw)}")


def _split_cookie(s: _Section) -> SplitCookieConfig:
    d = SplitCookieConfig()
    return SplitCookieConfig(
        name=s.take("name", _scalar(_token("cookie name")), d.name),
        ttl=s.take("ttl", _scalar(_duration()), d.ttl),
        secret_env=s.take("secret_env", _scalar(_env_name), d.secret_env),
    )


def _mirror(s: _Section) -> MirrorConfig:
    pool = s.take("pool", _scalar(_string))
    if pool is not None:
        s.ctx.pool_refs.append((s.at("pool"), pool))
    return MirrorConfig(
        pool=pool,
        percent=s.take("percent", _scalar(_percent)),
        max_in_flight=s.take("max_in_flight", _scalar(_int(1)), MIRROR_IN_FLIGHT),
    )


def _percent(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise _Invalid(f"expected a number of percent, like 10 or 0.5; got {show_value(raw)}")
    if not 0 < raw <= 100:
        raise _Invalid(f"must be more than 0 and at most 100, got {raw}")
    return float(raw)


def _match(s: _Section) -> MatchConfig:
    host = s.take("host", _scalar(_route_host), None)
    path_prefix = s.take("path_prefix", _scalar(_http_path), MatchConfig().path_prefix)
    methods = s.take("methods", _list_of(_scalar(_method), non_empty=True), None)
    headers = s.take("headers", _map_of(_scalar(_header_value), key=_lower_header_name), {})
    for name in headers:
        if name.encode() in OWN_REQUEST_HEADERS:
            # The balancer replaces the player's copy before forwarding, but routes see the
            # request as sent: matching on it would believe whatever a player claims.
            better = " (use match.client_certificate)" if name.startswith("x-client-cert") else ""
            s.error(f"headers.{name}", f"set by the balancer, not the player: cannot be matched{better}")
    return MatchConfig(
        host=host,
        path_prefix=path_prefix,
        methods=frozenset(methods) if methods is not None else None,
        headers=tuple(headers.items()),
        client_certificate=s.take("client_certificate", _mapping(_client_certificate_match), None),
    )


def _client_certificate_match(s: _Section) -> ClientCertificateMatch:
    match = ClientCertificateMatch(
        subject=s.take("subject", _scalar(_string), None),
        fingerprint=s.take("fingerprint", _scalar(_fingerprint), None),
    )
    if match.subject is None and match.fingerprint is None and not s.failed:
        s.ctx.error(s.path, "give subject, fingerprint or both")
    return match


def _fingerprint(raw: object) -> str:
    """SHA-256 as 64 hex digits; `AB:CD:...` (openssl's form) is accepted too."""
    text = _string(raw).replace(":", "").lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise _Invalid(f"expected a SHA-256 fingerprint (64 hex digits), got {show_value(raw)}")
    return text


def _lower_header_name(raw: object) -> str:
    return _header_name(raw).lower()


def _plugin(raw: object, path: str, ctx: _Context) -> PluginConfig | None:
    if not isinstance(raw, dict):
        raise _Invalid(f"expected a one-key mapping {{plugin name: settings}}, got {show_value(raw)}")
    if len(raw) != 1:
        raise _Invalid(f"expected exactly one key, the plugin name; got {len(raw)}")
    ((name, settings),) = raw.items()
    if not isinstance(name, str):
        raise _Invalid(f"the plugin name must be a string, got {show_value(name)}")
    return parse_plugin(name, settings, path, ctx.errors)


def _pools(raw: object, path: str, ctx: _Context) -> dict[str, PoolConfig]:
    if not isinstance(raw, dict):
        raise _Invalid(f"expected a mapping of pool names to pools, got {show_value(raw)}")
    if not raw:
        raise _Invalid("must define at least one pool")
    pools: dict[str, PoolConfig] = {}
    for raw_name, raw_pool in raw.items():
        at = _join(path, str(raw_name))
        ctx.pool_names.add(str(raw_name))  # a route naming a broken pool: one error, not two
        try:
            name = _id(raw_name)
        except _Invalid as exc:
            ctx.error(at, f"bad pool name: {exc}")
            continue
        pool = _run(_mapping(lambda s, name=name: _pool(s, name)), raw_pool, at, ctx, None)
        if pool is not None:
            pools[name] = pool
    return pools


def _pool(s: _Section, name: str) -> PoolConfig:
    d = PoolConfig(name)
    balance = s.take("balance", _scalar(_choice(*_BALANCES)), d.balance)
    hash_on = s.take("hash_on", _scalar(_hash_on), d.hash_on)
    hash_balance_factor = s.take("hash_balance_factor", _scalar(_balance_factor), d.hash_balance_factor)
    ewma_decay = s.take("ewma_decay", _scalar(_duration()), d.ewma_decay)
    geo = s.take("geo", _scalar(_bool), d.geo)
    if geo:
        s.ctx.geo_pools.append(s.at("geo"))
    backend = _mapping(lambda b: _backend(b, geo_pool=geo))
    pool = PoolConfig(
        name=name,
        balance=balance,
        hash_on=hash_on,
        hash_balance_factor=hash_balance_factor,
        ewma_decay=ewma_decay,
        geo=geo,
        sticky=s.take("sticky", _mapping(_sticky), None),
        health_check=s.take("health_check", _mapping(_health_check), None),
        outlier=s.take("outlier", _mapping(_outlier), d.outlier),
        slow_start=s.take("slow_start", _scalar(_duration(allow_zero=True)), d.slow_start),
        retries=s.take("retries", _mapping(_retries), d.retries),
        timeouts=s.take("timeouts", _mapping(_timeouts), d.timeouts),
        max_connections_per_backend=s.take(
            "max_connections_per_backend", _scalar(_int(1)), d.max_connections_per_backend
        ),
        drain_timeout=s.take("drain_timeout", _scalar(_duration()), d.drain_timeout),
        backends=s.take("backends", _list_of(backend, unique="id"), ()),
        discovery=s.take("discovery", _mapping(_discovery), None),
        tls=s.take("tls", _mapping(_upstream_tls), None),
    )
    if not pool.backends and pool.discovery is None and not s.failed & {"backends", "discovery"}:
        s.ctx.error(s.path, "has neither backends nor discovery")
    return pool


def _sticky(s: _Section) -> StickyConfig:
    d = StickyConfig(cookie="")
    return StickyConfig(
        cookie=s.take("cookie", _scalar(_token("cookie name"))),
        ttl=s.take("ttl", _scalar(_duration()), d.ttl),
        secret_env=s.take("secret_env", _scalar(_env_name), d.secret_env),
        on_failure=s.take("on_failure", _scalar(_choice(*_ON_FAILURE)), d.on_failure),
    )


def _health_check(s: _Section) -> HealthCheckConfig:
    d = HealthCheckConfig()
    path = s.take("path", _scalar(_http_path), None)
    tcp = s.take("tcp", _scalar(_bool), d.tcp)
    if tcp and path is not None:
        s.error("tcp", "tcp: true only connects; remove path, or set tcp: false")
    return HealthCheckConfig(
        path=None if tcp else path or d.path,
        tcp=tcp,
        interval=s.take("interval", _scalar(_duration()), d.interval),
        timeout=s.take("timeout", _scalar(_duration()), d.timeout),
        healthy_threshold=s.take("healthy_threshold", _scalar(_int(1)), d.healthy_threshold),
        unhealthy_threshold=s.take("unhealthy_threshold", _scalar(_int(1)), d.unhealthy_threshold),
        expect_status=s.take("expect_status", _scalar(_expect_status), d.expect_status),
    )


def _outlier(s: _Section) -> OutlierConfig:
    d = OutlierConfig()
    duration = _scalar(_duration())
    outlier = OutlierConfig(
        consecutive_failures=s.take("consecutive_failures", _scalar(_int(1)), d.consecutive_failures),
        base_ejection=s.take("base_ejection", duration, d.base_ejection),
        max_ejection=s.take("max_ejection", duration, d.max_ejection),
        max_ejected_percent=s.take("max_ejected_percent", _scalar(_int(0, 100)), d.max_ejected_percent),
    )
    if outlier.max_ejection < outlier.base_ejection:
        s.error("max_ejection", "must be at least base_ejection")
    return outlier


def _retries(s: _Section) -> RetryConfig:
    d = RetryConfig()
    return RetryConfig(
        attempts=s.take("attempts", _scalar(_int(1)), d.attempts),
        on=frozenset(s.take("on", _list_of(_scalar(_retry_condition)), d.on)),
    )


def _timeouts(s: _Section) -> Timeouts:
    d = Timeouts()
    duration = _scalar(_duration())
    return Timeouts(
        connect=s.take("connect", duration, d.connect),
        response=s.take("response", duration, d.response),
        idle=s.take("idle", duration, d.idle),
        websocket_idle=s.take("websocket_idle", duration, d.websocket_idle),
    )


def _backend(s: _Section, *, geo_pool: bool) -> BackendConfig:
    backend_id = s.take("id", _scalar(_id))
    address = s.take("address", _scalar(_address(allow_port_zero=False)))
    region = s.take("region", _scalar(_string), None)
    if geo_pool and region is None and "region" not in s.failed:
        s.error("region", "required in a pool with geo: true")
    elif geo_pool and region is not None:
        s.ctx.region_refs.append((s.at("region"), region))
    return BackendConfig(
        id=backend_id, address=address, region=region, weight=s.take("weight", _scalar(_int(1)), 1)
    )


def _discovery(s: _Section) -> ConsulDiscoveryConfig | None:
    return s.take("consul", _mapping(_consul_discovery))


def _consul_discovery(s: _Section) -> ConsulDiscoveryConfig:
    d = ConsulDiscoveryConfig(service="")
    return ConsulDiscoveryConfig(
        service=s.take("service", _scalar(_string)),
        tags=s.take("tags", _list_of(_scalar(_string)), d.tags),
        region_from=s.take("region_from", _scalar(_region_from), None),
        weight_from=s.take("weight_from", _scalar(_weight_from), d.weight_from),
    )
