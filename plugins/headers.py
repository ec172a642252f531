"""`headers`: set, add and remove headers on the request and on the response (docs/plugins.md).

    plugins:
      - headers:
          request:  {set: {X-Tenant: casino-eu}, add: {Via: edge}, remove: [X-Debug]}
          response: {set: {Strict-Transport-Security: max-age=31536000}, remove: [Server]}

In each direction `remove` runs first, then `set` (replaces every field of that name), then
`add` (appends; give a list to add a name more than once). Framing and hop-by-hop headers,
`Host`, and the headers the balancer sets itself (X-Forwarded-*, X-Request-Id, X-Client-Region)
cannot be edited: the config is refused with the path of the offending name.
"""

from __future__ import annotations

from dataclasses import dataclass

from balancer.compiled import fields
from balancer.plugins import (
    PROTECTED_REQUEST_HEADERS,
    PROTECTED_RESPONSE_HEADERS,
    Headers,
    Plugin,
    PluginRequest,
    PluginResponse,
    PreparedField,
    prepare_field,
)
from plugins._settings import Errors, header_name, header_value, section, show, string_list


@dataclass(frozen=True, slots=True)
class Edits:
    remove: tuple[str, ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()

    def prepared(self) -> PreparedEdits:
        """The same edits as fields checked and encoded now, once per config, not per request."""
        return PreparedEdits(
            remove=tuple(prepare_field(name) for name in self.remove),
            set=tuple(prepare_field(name, value) for name, value in self.set),
            add=tuple(prepare_field(name, value) for name, value in self.add),
        )

    def __bool__(self) -> bool:
        return bool(self.remove or self.set or self.add)


class PreparedEdits:
    """One direction's edits, applied on every request (a C class in the compiled build, whose
    calls to the prepared edits are C calls: headers.pxd)."""

    __slots__ = fields(__name__, "PreparedEdits")  # its .pxd declares them

    def __init__(self, remove: tuple[PreparedField, ...], set: tuple[PreparedField, ...],
                 add: tuple[PreparedField, ...]) -> None:
        self.remove = remove
        self.set = set
        self.add = add

    def apply(self, headers: Headers) -> None:
        if headers is None:  # the compiled build would call a method of None
            raise TypeError("edits apply to Headers")
        for field in self.remove:
            headers.remove_prepared(field)
        for field in self.set:
            headers.set_prepared(field)
        for field in self.add:
            headers.add_prepared(field)


# The hooks' work, as functions the compiled build types (headers.pxd): the views' fields are
# C fields there, with no attribute lookups by name.
def edit_request(edits: PreparedEdits, request: PluginRequest) -> None:
    if request is None:  # the compiled build would read a field of None
        raise TypeError("header edits need a PluginRequest")
    edits.apply(request.headers)


def edit_response(edits: PreparedEdits, response: PluginResponse) -> None:
    if response is None:
        raise TypeError("header edits need a PluginResponse")
    edits.apply(response.headers)


@dataclass(frozen=True, slots=True)
class HeadersSettings:
    request: Edits = Edits()
    response: Edits = Edits()


class HeaderEdits(Plugin):
    def __init__(self, settings: HeadersSettings) -> None:
        super().__init__(settings)
        self.request_edits = settings.request.prepared()
        self.response_edits = settings.response.prepared()
        # A direction with nothing to do has no hook at all, so the data plane skips it.
        if not settings.request:
            self.on_request = None  # type: ignore[assignment]
        if not settings.response:
            self.on_response = None  # type: ignore[assignment]

    def on_request(self, request: PluginRequest) -> None:  # type: ignore[override]
        edit_request(self.request_edits, request)

    def on_response(self, request: PluginRequest, response: PluginResponse) -> None:  # type: ignore[override]
        edit_response(self.response_edits, response)

    @classmethod
    def parse_settings(cls, raw: object, path: str, errors: Errors) -> HeadersSettings | None:
        settings = section(raw, path, errors, ("request", "response"))
        if settings is None:
            return None
        before = len(errors)
        request = _edits(settings.get("request"), f"{path}.request", errors, PROTECTED_REQUEST_HEADERS)
        response = _edits(settings.get("response"), f"{path}.response", errors, PROTECTED_RESPONSE_HEADERS)
        if len(errors) > before:
            return None
        return HeadersSettings(request=request, response=response)


def _edits(raw: object, path: str, errors: Errors, protected: frozenset[str]) -> Edits:
    settings = section(raw, path, errors, ("set", "add", "remove"))
    if not settings:
        return Edits()
    remove = []
    for index, item in enumerate(string_list(settings.get("remove", []), f"{path}.remove", errors) or []):
        name = header_name(item, f"{path}.remove.{index}", errors, protected)
        if name is not None:
            remove.append(name)
    return Edits(
        remove=tuple(remove),
        set=tuple(_pairs(settings.get("set", {}), f"{path}.set", errors, protected, many=False)),
        add=tuple(_pairs(settings.get("add", {}), f"{path}.add", errors, protected, many=True)),
    )


def _pairs(raw: object, path: str, errors: Errors, protected: frozenset[str],
           many: bool) -> list[tuple[str, str]]:
    if not isinstance(raw, dict):
        errors.append((path, f"expected a mapping of header name to value, got {show(raw)}"))
        return []
    pairs = []
    for name, value in raw.items():
        at = f"{path}.{name}"
        checked_name = header_name(name, at, errors, protected)
        values = value if many and isinstance(value, list) else [value]
        for index, item in enumerate(values):
            checked = header_value(item, f"{at}.{index}" if values is value else at, errors)
            if checked_name is not None and checked is not None:
                pairs.append((checked_name, checked))
    return pairs


PLUGIN = HeaderEdits
