"""`request_id`: name and shape of the request id, sent on the request and the response
(docs/plugins.md).

    plugins:
      - request_id: {header: X-Correlation-Id, format: hex}

The balancer always sends the backend an X-Request-Id (the client's, when it is 1-128 of
`A-Za-z0-9._-`, else a UUID4) and quotes it in its own error answers. This plugin lets the id
come in and go out under another header, and in another format: an incoming well-formed value
of `header` is kept, else a new id is made in `format` (`uuid4`, the default, or `hex`: 32 hex
digits). That id becomes the request id (X-Request-Id upstream, error answers) and is set as
`header` on the request to the backend and on the response to the client. Put it first in the
route's list so that answers of the plugins after it carry the id too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from balancer.http.headers import new_request_id
from balancer.plugins import (
    _REQUEST_ID,
    PROTECTED_REQUEST_HEADERS,
    Plugin,
    PluginRequest,
    PluginResponse,
    PreparedField,
    prepare_field,
)
from plugins._settings import Errors, header_name, section, show

# Ids must be unique, not secret: the balancer's own generator (no system call per request).
FORMATS: dict[str, Callable[[], str]] = {
    "uuid4": new_request_id,
    "hex": lambda: new_request_id().replace("-", ""),
}


@dataclass(frozen=True, slots=True)
class RequestIdSettings:
    header: str = "X-Request-Id"
    format: str = "uuid4"


class RequestId(Plugin):
    def __init__(self, settings: RequestIdSettings) -> None:
        super().__init__(settings)
        self.header = settings.header
        self.new_id = FORMATS[settings.format]
        self.prepared_name = prepare_field(settings.header)
        # X-Request-Id itself is the balancer's: it goes upstream as `request.request_id`.
        self.extra_header = settings.header.lower() != "x-request-id"
        if not self.extra_header and settings.format == "uuid4":
            # The balancer's own rule already is "keep a well-formed X-Request-Id, else a
            # UUID4": only the response needs this plugin.
            self.on_request = None  # type: ignore[assignment]

    def on_request(self, request: PluginRequest) -> None:
        incoming = request.headers.get(self.header)
        # Well-formed is what `request.request_id` itself accepts.
        request_id = incoming if incoming is not None and _REQUEST_ID.fullmatch(incoming) else self.new_id()
        request.request_id = request_id
        if self.extra_header:
            request.headers.set(self.header, request_id)

    def on_response(self, request: PluginRequest, response: PluginResponse) -> None:
        answer_with_id(self.prepared_name, request, response)

    @classmethod
    def parse_settings(cls, raw: object, path: str, errors: Errors) -> RequestIdSettings | None:
        settings = section(raw, path, errors, ("header", "format"))
        if settings is None:
            return None
        before = len(errors)
        header = settings.get("header", "X-Request-Id")
        protected = PROTECTED_REQUEST_HEADERS - {"x-request-id"}
        header_name(header, f"{path}.header", errors, protected)
        form = settings.get("format", "uuid4")
        if form not in FORMATS:
            errors.append((f"{path}.format", f"expected one of {', '.join(FORMATS)}; got {show(form)}"))
        if len(errors) > before:
            return None
        return RequestIdSettings(header=header, format=form)


def answer_with_id(prepared_name: PreparedField, request: PluginRequest, response: PluginResponse) -> None:
    """The response hook's work, typed in the compiled build (request_id.pxd). The id is already
    checked (1-128 of A-Za-z0-9._-): only the name needed preparing."""
    if request is None or response is None:  # the compiled build would read a field of None
        raise TypeError("the request id needs a PluginRequest and a PluginResponse")
    request_id: str = request.request_id
    response.headers.set_prepared((prepared_name[0], prepared_name[1], request_id.encode("ascii")))


PLUGIN = RequestId
