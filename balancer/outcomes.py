"""Why an exchange ended: the access log's `outcome`, like HAProxy's termination state or
Envoy's response flags. docs/configuration.md lists them with their statuses; this is the one
list. The exchange names one wherever it ends (balancer/http/exchange.py `_ended`).
"""

OK = "ok"  # the backend's answer relayed whole (whatever its status)
NO_ROUTE = "no_route"  # 404: no route matches
GEO_BLOCKED = "geo_blocked"  # 451: a blocked country (geo.blocked_countries or a plugin)
PINNED_UNAVAILABLE = "pinned_unavailable"  # 503: a pinned country, no backend in its region
STICKY_UNAVAILABLE = "sticky_unavailable"  # 503: sticky on_failure: fail, the player's backend is down
NO_BACKEND = "no_backend"  # 503: no eligible backend
RATE_LIMITED = "rate_limited"  # 429 from a plugin
PLUGIN_ANSWER = "plugin_answer"  # another answer a plugin gave itself (403, a redirect...)
PLUGIN_ERROR = "plugin_error"  # 500: a plugin raised
UPSTREAM_CONNECT_FAILURE = "upstream_connect_failure"  # 502: no backend connection
UPSTREAM_RESET = "upstream_reset"  # 502, or a response cut: the backend closed or reset
UPSTREAM_TIMEOUT = "upstream_timeout"  # 504, or a response cut: timeouts.response ran out
UPSTREAM_PROTOCOL_ERROR = "upstream_protocol_error"  # 502, or a response cut: not HTTP/1.1
CLIENT_CLOSED = "client_closed"  # the player left before the end (499 if before the answer)
CLIENT_TIMEOUT = "client_timeout"  # 408: head or body too slow
BAD_REQUEST = "bad_request"  # 400, 411, 417, 501, 505: a request the balancer refuses
TOO_LARGE = "too_large"  # 413, 414, 431
WEBSOCKET_CLOSED = "websocket_closed"  # 101: a WebSocket ended (either side, idle or drain)

OUTCOMES = (
    OK, NO_ROUTE, GEO_BLOCKED, PINNED_UNAVAILABLE, STICKY_UNAVAILABLE, NO_BACKEND, RATE_LIMITED,
    PLUGIN_ANSWER, PLUGIN_ERROR, UPSTREAM_CONNECT_FAILURE, UPSTREAM_RESET, UPSTREAM_TIMEOUT,
    UPSTREAM_PROTOCOL_ERROR, CLIENT_CLOSED, CLIENT_TIMEOUT, BAD_REQUEST, TOO_LARGE,
    WEBSOCKET_CLOSED,
)

# The balancer's own error answers, by status (exchange.reply and the request reader).
STATUS_OUTCOME = {
    400: BAD_REQUEST, 411: BAD_REQUEST, 417: BAD_REQUEST, 501: BAD_REQUEST, 505: BAD_REQUEST,
    413: TOO_LARGE, 414: TOO_LARGE, 431: TOO_LARGE, 408: CLIENT_TIMEOUT, 404: NO_ROUTE,
    451: GEO_BLOCKED, 429: RATE_LIMITED, 500: PLUGIN_ERROR, 503: NO_BACKEND,
}
