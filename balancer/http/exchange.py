"""One request cycle: route, choose a backend, stream the request, relay the response, retry
what is safe to retry.

The way of a request reads top to bottom here: `begin` (route -> plugins -> geo/sticky ->
balance) -> `_attempt` (upstream connection) -> `response_*` callbacks -> `_finish`. Policy
(which backend, whether a retry is allowed) is asked of the selector and retry rules; this
class only moves bytes and keeps the counts honest.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from time import monotonic, perf_counter
from typing import TYPE_CHECKING

from .. import outlier
from ..compiled import fields
from ..outcomes import (
    CLIENT_CLOSED, GEO_BLOCKED, NO_BACKEND, PINNED_UNAVAILABLE, PLUGIN_ANSWER, RATE_LIMITED,
    STATUS_OUTCOME, STICKY_UNAVAILABLE, UPSTREAM_CONNECT_FAILURE, UPSTREAM_PROTOCOL_ERROR,
    UPSTREAM_RESET, UPSTREAM_TIMEOUT, WEBSOCKET_CLOSED, BAD_REQUEST, OK,
)
from ..tasks import spawn
from ..phases import DONE, FORWARDING, MOVES, RESPONDING, ROUTING, TUNNEL, IllegalTransition
from ..retries import RESEND, RETRY, may_retry, safe_to_repeat
from ..runtime import NONE_IN_REGION, STICKY_GONE, Facts
from ..plugins import PluginRequest, Response as PluginAnswer, answer_parts, report_failure, request_view, response_view
from . import upstream
from .errors import (
    CONNECT, PROTOCOL, REJECT_REASON, RESET, STALE, TIMEOUT, RequestError, error_answer,
)
from .headers import (
    HOP_BY_HOP, NOT_FORWARDED, forwarded_for, hop_by_hop_with, length_bits, request_id_from,
)
from .head_bytes import *  # join_bytes, field_lines: C in the compiled build (headers.pxd), else Python
from .parser import RequestHead
from .timers import idle_sweep

if TYPE_CHECKING:
    from ..plugins import PluginChain
    from ..pool import Backend
    from ..routing import Route
    from ..runtime import PoolRuntime, Runtime
    from .downstream import Downstream
    from .upstream import UpstreamConnection

# Request body kept for a retry; past this a streamed body can no longer be replayed.
RETRY_BUFFER = 64 * 1024
# Unsent body held while the backend connection opens; past this the client is paused.
PENDING_LIMIT = 256 * 1024

# Plugin answers counted in balancer_rejected_requests_total; other statuses (403...) have no
# reason among the metric's documented labels (docs/monitoring.md).
_PLUGIN_REJECT_REASON = {429: "rate_limited", 451: "geo_blocked"}
# The access log's outcome for an upstream failure kind, for a plugin's answer, and for a
# pool that had no backend to give (by the reason it gave).
_FAILURE_OUTCOME = {CONNECT: UPSTREAM_CONNECT_FAILURE, RESET: UPSTREAM_RESET,
                    TIMEOUT: UPSTREAM_TIMEOUT, PROTOCOL: UPSTREAM_PROTOCOL_ERROR}
_PLUGIN_OUTCOME = {429: RATE_LIMITED, 451: GEO_BLOCKED}
_NO_BACKEND_OUTCOME = {NONE_IN_REGION: PINNED_UNAVAILABLE, STICKY_GONE: STICKY_UNAVAILABLE}


class Exchange:
    __slots__ = fields(__name__, "Exchange")  # its .pxd declares them

    def __init__(self, client: Downstream, head: RequestHead, runtime: Runtime) -> None:
        # The player's side: an HTTP/1.1 connection or, later, an HTTP/2 stream. The exchange
        # hands it statuses, fields and body bytes; framing them is the downstream's job.
        self.client = client
        # Read through self.head below: the field is typed in the compiled build, the argument
        # is not, so its fields are C reads there rather than attribute lookups.
        self.head = head
        self.runtime = runtime
        self.facts: Facts | None = None  # what choosing a backend knew (its side's; for a retry)
        self.route: Route | None = None
        self.pool: PoolRuntime | None = None
        self.backend: Backend | None = None
        self.upstream: UpstreamConnection | None = None
        self.request_id = ""
        # Not loop.time(): uvloop's clock is in whole milliseconds, cached per loop iteration,
        # so most requests would last 0 s and the duration histogram's sum would read ~0.
        self.started = perf_counter()
        self.tried: list[Backend] = []
        # Framed body chunks: before a backend connection is attached, the ones to send; after,
        # the ones sent, kept for a retry while they fit in RETRY_BUFFER. Every attach (the
        # first, or a retry's) sends all of them.
        self.body: list[bytes] = []
        self.body_size = 0
        self.replayable = True
        self.request_done = not head.has_body
        self.phase = ROUTING  # balancer/phases.py: where this exchange is in its life
        self.status = 0
        self.close_client = not self.head.keep_alive
        self.upstream_head = b""
        self.set_cookie: bytes | None = None
        self.split_cookie: bytes | None = None  # a canary split's cookie, new or renewed
        self.region: str | None = None
        self.country: str | None = None
        self.early_tunnel: bytes = b""
        # Facts the phase does not keep: it became a WebSocket (still true once it is DONE: it
        # was counted at its 101), and a backend connection is being opened for it.
        self.tunnel = False
        self._connecting = False
        self._head_only = self.head.method == b"HEAD"
        self._safe = False  # safe_to_repeat(head), read once per attempt (_attempt)
        self._response_hooks: tuple = ()
        self._sent_at = 0.0  # when the current attempt began (balance: ewma measures from it)
        self.bytes_in = self.head.size  # head, then body and WebSocket bytes from the player
        self.bytes_out = 0  # everything written to the player
        self.sticky = "none"  # none | hit | new | rebalanced | failed
        self.connect_time = -1.0  # seconds opening the backend connection; 0 when kept alive
        self.sent_at = 0.0  # perf_counter when the request went to the backend
        self.head_at = 0.0  # ... and when the response head came back
        self.idle_active = False
        self.idle_since = 0.0

    # -- its phase ------------------------------------------------------------------------

    def _move(self, phase: int) -> None:
        """Go to `phase`; a move balancer/phases.py does not allow is a bug and raises."""
        old = self.phase
        if not (MOVES >> (old * 5 + phase)) & 1:
            raise IllegalTransition(old, phase)
        self.phase = phase

    @property
    def finished(self) -> bool:
        """Over: answered, closed as a tunnel, or the player left."""
        return self.phase == DONE

    @property
    def response_started(self) -> bool:
        """An answer has begun (or the exchange is over): no other answer may start."""
        return self.phase >= RESPONDING

    # -- the way of a request -------------------------------------------------------------

    def begin(self) -> None:
        runtime = self.runtime
        head = self.head
        client = self.client
        self.request_id = request_id_from(head.request_id)
        if head.absolute and not runtime.routes.serves_host(head.host):
            raise RequestError(400, "absolute-form target for a host that is not served")
        # Step 1 of docs/architecture.md, for every request: a blocked jurisdiction learns nothing
        # else, not even whether a route exists.
        geo = runtime.geo
        if geo is not None:
            country = geo.country(client.client_ip, self._country_header(geo.header_name),
                                  forwarded_for=head.forwarded_for)
            self.country = country
            if geo.is_blocked(country):
                self.route = runtime.routes.match(head.host, head.path, head.method, head.headers,
                                                  client.client_cert)
                self.reply(451, "unavailable in your jurisdiction", outcome=GEO_BLOCKED)
                return
            self.region = geo.region_of(country)
        route = runtime.routes.match(head.host, head.path, head.method, head.headers,
                                     client.client_cert)
        if route is None:
            self.reply(404, "no route")
            return
        self.route = route
        plugins = route.plugins
        if plugins:
            self._run_request_hooks(plugins, 0, request_view(self, self.client.client_ip)
                                    if plugins.request_hooks else None)
            return
        self._choose()

    def _country_header(self, lname: bytes) -> bytes | None:
        """The country header, believed only from a trusted peer."""
        return self.head.header(lname) if self.client.peer_trusted else None

    def _run_request_hooks(self, plugins: PluginChain, index: int, request: PluginRequest | None) -> None:
        """The route's on_request hooks from `index` on: inline while they are plain functions;
        the first one that returns an awaitable moves the rest into a task (so only routes with
        async hooks pay for a task per request). The exchange does not keep `request`: a view
        pointing back at its exchange would be a reference cycle per request, left for the
        garbage collector, which costs the tail latency dearly (docs/decisions.md)."""
        hooks = plugins.request_hooks
        while index < len(hooks):
            name, hook = hooks[index]
            index += 1
            try:
                answer = hook(request)
            except Exception as exc:  # a plugin's bug must not leave the player hanging
                self._plugin_failed(name, "on_request", exc)
                return
            if answer is None:
                continue
            if not isinstance(answer, PluginAnswer) and inspect.isawaitable(answer):
                spawn(self._await_request_hook(plugins, index, request, name, answer))
                return
            self.reply_plugin(answer, name)
            return
        self._response_hooks = plugins.response_hooks
        self._choose()

    async def _await_request_hook(self, plugins: PluginChain, index: int, request: PluginRequest | None,
                                  name: str, pending: object) -> None:
        try:
            answer = await pending  # type: ignore[misc]
        except Exception as exc:
            if self.phase != DONE:
                self._plugin_failed(name, "on_request", exc)
                self.client.flush()
            return
        if self.phase == DONE:
            return  # the player left while the plugin was busy
        try:
            if answer is None:
                self._run_request_hooks(plugins, index, request)
            else:
                self.reply_plugin(answer, name)
        except RequestError as exc:
            self.reply(exc.status, exc.message, close=exc.close)
        self.client.flush()

    def _plugin_failed(self, name: str, hook: str, exc: Exception) -> None:
        route = self.route
        report_failure(route.name if route is not None else "", name, hook, exc)
        self.reply(500, "plugin failed")

    def _choose(self) -> None:
        route = self.route
        assert route is not None
        client = self.client
        # The player's side keeps one Facts for its requests (runtime.Facts). This exchange is
        # its side's only one in progress until it is DONE (a pipelined request begins after),
        # so its facts stay its own as long as it may choose again.
        facts = client.facts
        if facts is None:
            facts = Facts(None, client.client_ip, client.scheme == b"https", None, None, 0.0)
            client.facts = facts
        self.facts = facts.for_request(self.head, self.country, self.region, monotonic())
        split = route.split
        if split is None:
            pool = self.runtime.pools[route.pool_name]
            choice = pool.choose(facts)
        else:
            choice = split.choose(facts)
            self.split_cookie = choice.split_cookie
        self.pool = choice.pool  # a split's side that serves
        self.sticky = choice.sticky
        if choice.backend is None:
            self.reply(503, choice.reason, retry_after=choice.retry_after,
                       outcome=_NO_BACKEND_OUTCOME.get(choice.reason, NO_BACKEND))
            return
        self.set_cookie = choice.set_cookie
        self.upstream_head = self._build_upstream_head()
        if route.mirror is not None:
            route.mirror.offer(self)
        self._attempt(choice.backend)

    def _build_upstream_head(self) -> bytes:
        head = self.head
        client = self.client
        drop = NOT_FORWARDED if head.connection is None else hop_by_hop_with(head.connection, NOT_FORWARDED)
        lines = [head.method, b" ", head.target, b" HTTP/1.1\r\n",
                 field_lines(head.headers, drop,
                             _NOT_FORWARDED_LENGTHS if drop is NOT_FORWARDED else 0, False)]
        if head.chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        if head.upgrade is not None:
            lines.append(b"connection: upgrade\r\nupgrade: ")
            lines.append(head.upgrade)
            lines.append(b"\r\n")
        # Pieces for the one join below, not `+`: each `+` would make a bytes object of its own.
        lines.append(b"x-forwarded-for: ")
        lines.append(forwarded_for(head.forwarded_for, client.client_ip, client.peer_trusted))
        lines.append(b"\r\nx-forwarded-proto: ")
        lines.append(client.scheme)
        lines.append(b"\r\nx-request-id: ")
        lines.append(self.request_id.encode())
        if head.host_header is not None:
            lines.append(b"\r\nx-forwarded-host: ")
            lines.append(head.host_header)
        else:
            # An HTTP/1.0 request may lack Host, but we forward as HTTP/1.1, which requires
            # one; RFC 9112 §3.2: with no authority to name, send it empty.
            lines.append(b"\r\nhost: ")
        if self.region is not None:
            lines.append(b"\r\nx-client-region: ")
            lines.append(self.region.encode())
        cert = client.client_cert
        if cert is not None:
            lines.append(cert.headers)  # X-Client-Cert-Subject and -Fingerprint
        lines.append(b"\r\n\r\n")
        return join_bytes(lines)

    def _attempt(self, backend: Backend) -> None:
        self._move(FORWARDING)
        self.backend = backend
        self.tried.append(backend)
        backend.active_requests += 1
        pool = self.pool
        assert pool is not None
        if pool.latency_aware:
            self._sent_at = monotonic()
        # Once per attempt, after the request hooks (a plugin may add an Idempotency-Key): both
        # the choice of a pooled connection below and _attach's way of sending read it.
        self._safe = safe_to_repeat(self.head)
        now = self.client.loop.time()
        conn = upstream.take_idle(backend, now, pool.idle_timeout, pool.config.tls)
        while conn is not None and not self._safe and conn.at_risk():
            # A request that must not be lost goes only on a connection the backend has not
            # closed already (the loop may not have read its FIN yet).
            conn.close()
            conn = upstream.take_idle(backend, now, pool.idle_timeout, pool.config.tls)
        if conn is not None:
            self.connect_time = 0.0
            self._attach(conn, now)
        else:
            self._open_connection(backend)

    def _open_connection(self, backend: Backend) -> None:
        pool = self.pool
        self._connecting = True
        spawn(self._connect(backend, pool.connect_timeout, pool.idle_timeout))  # type: ignore[union-attr]

    async def _connect(self, backend: Backend, timeout: float, idle: float) -> None:
        loop = self.client.loop
        began = perf_counter()
        try:
            conn = await upstream.connect(backend, loop, timeout, idle,
                                          self.runtime.limits.max_response_header_bytes, self.pool.tls)
        except (OSError, asyncio.TimeoutError):
            self.connect_time = perf_counter() - began
            self._connecting = False
            if self.phase != DONE:  # else client_lost already released the backend
                self.upstream_failed(None, CONNECT)
                self.client.flush()
            return
        self.connect_time = perf_counter() - began
        self._connecting = False
        if self.phase == DONE:
            conn.release(loop.time())  # the player left meanwhile; keep it for the next one
            return
        self._attach(conn, loop.time())
        self.client.flush()

    def _attach(self, conn: UpstreamConnection, now: float) -> None:
        self.upstream = conn
        body = self.body
        data = self.upstream_head
        if body:
            data = data + b"".join(body)
            if self.body_size > RETRY_BUFFER:
                self.replayable = False
                body.clear()
        conn.deadline.set_at(now + self.pool.response_timeout)  # type: ignore[union-attr]
        if self.runtime.access_log is not None:  # only the access log reads it
            self.sent_at = perf_counter()
        conn.start(self, data, self._head_only, self._safe)
        if self.client.write_paused:
            # The player stopped reading during an earlier response (or while this backend
            # connection was opening): its pause_writing is not called again, so this
            # connection starts paused too, or a whole response would pile up in memory.
            conn.pause_reading()
        self.client.resume_request_body()

    # -- request body from the client -----------------------------------------------------

    def request_body(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.phase == DONE:
            return
        if self.head.chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._send_body(data)

    def request_ended(self) -> None:
        self.request_done = True
        if self.phase == DONE:
            return
        if self.head.chunked:
            self._send_body(b"0\r\n\r\n")

    def _send_body(self, data: bytes) -> None:
        conn = self.upstream
        if conn is not None:
            conn.write(data)
            conn.deadline.set_in(self.pool.response_timeout)  # type: ignore[union-attr]
            if self.replayable:
                self.body.append(data)
                self.body_size += len(data)
                if self.body_size > RETRY_BUFFER:
                    self.replayable = False
                    self.body.clear()
            return
        self.body.append(data)
        self.body_size += len(data)
        if self.body_size > PENDING_LIMIT:
            self.client.pause_request_body()

    # -- the response from the backend ----------------------------------------------------

    def response_interim(self, status: int, reason: bytes,
                         headers: list[tuple[bytes, bytes, bytes]]) -> None:
        """1xx (100 Continue, 103 Early Hints): relayed as is, the final answer follows."""
        if self.phase >= RESPONDING:
            return
        self.bytes_out += self.client.send_interim(status, reason, headers)

    def response_head(self, conn: UpstreamConnection, status: int, reason: bytes,
                      headers: list[tuple[bytes, bytes, bytes]], chunked: bool, has_length: bool,
                      bodiless: bool, connection: bytes | None) -> None:
        """The backend's final response head. `headers` are (lower-case name, name, value);
        `connection` is the backend's Connection header, whose tokens are hop-by-hop too."""
        if self.runtime.access_log is not None:
            self.head_at = perf_counter()
        backend = self.backend
        assert backend is not None
        pool = self.pool
        if pool.latency_aware:
            now = monotonic()
            pool.strategy.observe(backend, now - self._sent_at, now)
        if status >= 500:
            self._count_failure(backend, None)
            retry_to = (self._retry_target() if status in pool.retry_statuses
                        and self._may_retry(str(status)) == RETRY else None)
            if retry_to is not None:
                # Give this answer up: free the backend it came from and forget its
                # connection, or body still streaming in would be written to the dead one.
                self.upstream = None
                conn.close()
                self._release_backend()
                self._retry(retry_to)
                raise _Abandoned()
            # No retry allowed or nowhere else to go: the backend's own 5xx is the answer.
        else:
            if backend.consecutive_failures:  # the common case costs no call
                outlier.record_success(backend)
        if self._response_hooks:
            headers = self._run_response_hooks(conn, status, headers)
        self.status = status
        self._move(RESPONDING)
        if not self.request_done or (self.head.upgrade is not None and status != 101):
            # The rest of the request body is not worth reading; and after a refused upgrade
            # the reader stopped at the head, so this connection cannot carry another request.
            self.close_client = True
        extra = None
        if self.set_cookie is not None:
            extra = [(b"set-cookie", self.set_cookie)]
        if self.split_cookie is not None:
            if extra is None:
                extra = []
            extra.append((b"set-cookie", self.split_cookie))
        self.bytes_out += self.client.send_head(status, reason, headers,
                                               HOP_BY_HOP if connection is None else hop_by_hop_with(connection),
                                               extra, bodiless or has_length or self._head_only, self.close_client)
        if status == 101:
            self._become_tunnel(conn)

    def _run_response_hooks(self, conn: UpstreamConnection, status: int,
                            headers: list[tuple[bytes, bytes, bytes]]) -> list[tuple[bytes, bytes, bytes]]:
        """The route's on_response hooks, on an editable copy of the backend's head. A hook
        that fails turns the answer into a 500 and drops the backend's: a plugin that edits
        response headers may be removing what must not reach a player."""
        fields = list(headers)
        response = response_view(status, fields)
        request = request_view(self, self.client.client_ip)
        for name, hook in self._response_hooks:
            try:
                hook(request, response)
            except Exception as exc:
                self.upstream = None
                conn.close()
                self._release_backend()
                self._plugin_failed(name, "on_response", exc)
                raise _Abandoned() from None
        return fields

    def response_body(self, data: bytes) -> None:
        if self.phase == DONE:
            return
        self.bytes_out += self.client.send_body(data)

    def response_end(self, conn: UpstreamConnection, reusable: bool) -> None:
        if self.phase == DONE:
            return
        self.bytes_out += self.client.end_response()
        self.upstream = None
        loop = self.client.loop
        if reusable and self.request_done and self.head.upgrade is None:
            conn.release(loop.time())
        else:
            conn.close()
        self._release_backend()
        self._finish(OK)

    # -- failures and retries -------------------------------------------------------------

    def upstream_failed(self, conn: UpstreamConnection | None, kind: str) -> None:
        """The backend connection failed (connect, reset, timeout or protocol error)."""
        if self.phase == DONE:
            return
        backend = self.backend
        assert backend is not None
        self.upstream = None
        decision = self._may_retry(kind)
        if decision == RESEND:
            # A pooled connection the backend had closed: once more, on a fresh connection to
            # the same backend (never stale).
            self.pool.pool.stale_retries_total += 1  # type: ignore[union-attr]
            self._open_connection(backend)
            return
        if kind == STALE:
            kind = RESET  # not sent again: to the player it is a reset like any other
        self._count_failure(backend, kind)
        self._release_backend()
        outcome = _FAILURE_OUTCOME[kind]
        if self.phase >= RESPONDING:
            self.client.abort()  # half a response cannot be mended; the player must see it
            self._finish(outcome)
            return
        retry_to = self._retry_target() if decision == RETRY else None
        if retry_to is not None:
            self._retry(retry_to)
            return
        if kind == TIMEOUT:
            self.reply(504, "backend timed out", outcome=outcome)
        else:
            self.reply(502, "backend failed", outcome=outcome)

    def _count_failure(self, backend: Backend, kind: str | None) -> None:
        if kind is not None:
            backend.count_error(kind)
        pool = self.pool
        assert pool is not None
        outlier.record_failure(pool.pool, backend, time.monotonic())

    def _may_retry(self, failure: str) -> int:
        """The money rules' answer (balancer/retries.py) for this request after `failure`."""
        retries = self.pool.config.retries  # type: ignore[union-attr]
        return may_retry(failure, safe_to_repeat(self.head), self.replayable, self.phase >= RESPONDING,
                         self.tunnel, len(self.tried), retries.attempts, retries.on)

    def _retry_target(self) -> Backend | None:
        """Another backend for a retry the rules allow; None when there is none (the failure
        is the answer: 502/504, or the backend's 5xx)."""
        pool = self.pool
        assert pool is not None
        choice = pool.choose_again(self.facts, self.tried, self.set_cookie is not None, self.sticky)
        if choice is None:
            return None
        if choice.set_cookie is not None:
            self.set_cookie = choice.set_cookie
        self.sticky = choice.sticky
        return choice.backend

    def _retry(self, backend: Backend) -> None:
        pool = self.pool
        assert pool is not None
        pool.retries_total += 1
        self._attempt(backend)

    def _release_backend(self) -> None:
        backend = self.backend
        if backend is not None and not self.tunnel:
            backend.active_requests -= 1

    # -- WebSocket tunnel -----------------------------------------------------------------

    def _become_tunnel(self, conn: UpstreamConnection) -> None:
        backend = self.backend
        assert backend is not None and self.pool is not None
        backend.active_requests -= 1
        backend.websockets += 1
        backend.tunnels.add(self)
        self._move(TUNNEL)
        self.tunnel = True
        self.upstream = conn
        # Bytes only from now on: parser state and request headers are dead weight on a
        # socket that may stay open for hours (10,000 of them per worker). The access log's
        # two are kept for the line written at the close.
        conn.drop_http_state()
        head = self.head
        head.headers = [h for h in head.headers if h[0] in _KEPT_FOR_LOG]
        # What only forwarding and choosing read (a player's cookies can be kilobytes).
        head.connection = head.host_header = head.cookie = head.forwarded_for = None
        self.upstream_head = b""  # no retry for a tunnel; a mirror copied it at the choice
        self.body = None  # type: ignore[assignment]
        self.facts = None  # a retry's, and no tunnel is retried
        # One shared timer watches the idle limit of every tunnel, not one per tunnel.
        idle_sweep(self.client.loop).add(self, self.pool.websocket_idle_timeout, backend.tunnels)
        if self.early_tunnel:
            conn.write(self.early_tunnel)
            self.early_tunnel = b""
        self.client.start_tunnel(self)
        self._count()  # answered: counted now; logged when it closes (_end_tunnel)

    def tunnel_from_client(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.phase != TUNNEL:
            # Before the 101 these bytes are not the backend's to see: if it refuses the
            # upgrade they would be read as a second request (WebSocket smuggling).
            if self.phase < RESPONDING:
                self.early_tunnel += data
            return
        conn = self.upstream
        if conn is not None:
            conn.write(data)
            self.idle_active = True

    def tunnel_from_backend(self, data: bytes) -> None:
        self.bytes_out += self.client.send_body(data)
        self.idle_active = True

    def idle_limit(self) -> float:
        return self.pool.websocket_idle_timeout  # type: ignore[union-attr]

    def idle_expired(self) -> None:
        """No byte either way for websocket_idle: closed as when its backend closes it."""
        self.tunnel_closed()

    def tunnel_closed(self) -> None:
        """The backend side of a tunnel ended: end the player's side too."""
        self._end_tunnel()
        self.client.close()

    def _end_tunnel(self) -> None:
        if self.phase == DONE:
            return
        self._move(DONE)
        backend = self.backend
        if backend is not None:
            backend.websockets -= 1
            backend.tunnels.discard(self)  # which also ends the idle sweep's watch
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            conn.close()
        self._ended(WEBSOCKET_CLOSED)

    # -- endings --------------------------------------------------------------------------

    def client_lost(self) -> None:
        """The player's connection closed: stop the backend side, keep the counts honest."""
        if self.tunnel:
            self._end_tunnel()
            return
        if self.phase == DONE:
            return
        self.abort_upstream()
        if self.phase < RESPONDING:
            self.status = 499  # as nginx: the client went away before the answer
        self._move(DONE)
        self._ended(CLIENT_CLOSED)

    def abort_upstream(self) -> None:
        """The player's request turned out bad mid-way: whatever reached the backend is void."""
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            conn.close()
        if self.backend is not None and (conn is not None or self._connecting):
            self._release_backend()
            self.backend = None

    def close_for_drain(self) -> None:
        """Drain deadline passed: the tunnel to a draining backend is closed."""
        self.client.close()
        self._end_tunnel()

    def reply(self, status: int, message: str, close: bool = False,
              retry_after: int | None = None, outcome: str | None = None) -> None:
        """Answer with one of the balancer's own JSON errors and end the exchange. `outcome`
        for the access log, when the status alone does not say it (STATUS_OUTCOME)."""
        if self.phase >= RESPONDING:
            return
        if not self.request_done or self.head.upgrade is not None or status in (400, 408, 413, 414, 431, 501):
            # After an upgrade request the reader stopped at its head (as in response_head):
            # this connection cannot carry another request.
            close = True
        self.close_client = self.close_client or close
        self.status = status
        self._move(RESPONDING)
        extra: tuple[tuple[bytes, bytes], ...] = ()
        if retry_after is not None:
            extra = ((b"retry-after", str(retry_after).encode()),)
        if not self.request_id:
            self.request_id = request_id_from(self.head.request_id)
        fields, body = error_answer(status, message, self.request_id, extra)
        self.bytes_out += self.client.send_answer(status, fields, body, self.close_client, self._head_only)
        reason = REJECT_REASON.get(status)
        if reason is not None:
            self.client.count_rejected(reason)
        self._finish(outcome or STATUS_OUTCOME.get(status, BAD_REQUEST))

    def reply_plugin(self, answer: object, plugin: str) -> None:
        """A plugin answered the request itself (429, 403, 451...): a complete response, its
        own body or the balancer's JSON error shape, counted as a rejection when it is one."""
        if self.phase >= RESPONDING:
            return
        if not isinstance(answer, PluginAnswer):
            self._plugin_failed(plugin, "on_request", TypeError(
                f"on_request returned {type(answer).__name__}, not a Response or None"))
            return
        close = self.close_client or not self.request_done or self.head.upgrade is not None
        try:
            status, fields, body = answer_parts(answer, self.request_id)
        except ValueError as exc:
            self._plugin_failed(plugin, "on_request", exc)
            return
        self.close_client = close
        self.status = status
        self._move(RESPONDING)
        self.bytes_out += self.client.send_answer(status, fields, body, close, self._head_only)
        reason = _PLUGIN_REJECT_REASON.get(answer.status)
        if reason is not None:
            self.client.count_rejected(reason)
        self._finish(_PLUGIN_OUTCOME.get(answer.status, PLUGIN_ANSWER))

    def _finish(self, outcome: str) -> None:
        if self.phase == DONE:
            return
        self._move(DONE)
        self._ended(outcome)
        self.client.exchange_finished(self)

    def _ended(self, outcome: str) -> None:
        """The one place where an exchange's end is recorded, with why it ended (`outcome`,
        one of balancer/access_log.py's OUTCOMES): counted (a WebSocket already was, at its
        101) and written to the access log."""
        if not self.tunnel:
            self._count()
        access_log = self.runtime.access_log
        if access_log is not None and access_log.on:
            access_log.exchange_ended(self, outcome)

    def _count(self) -> None:
        route = self.route
        pool = self.pool
        backend = self.backend
        self.runtime.stats.request(
            route.name if route is not None else "",
            pool.name if pool is not None else "",
            backend.id if backend is not None else "",
            self.head.method, self.status, perf_counter() - self.started,
        )


# Request headers a WebSocket keeps for its access-log line at the close.
_KEPT_FOR_LOG = frozenset({b"user-agent", b"referer"})
# Most request header names are told apart from the ones not forwarded by length alone.
_NOT_FORWARDED_LENGTHS = length_bits(NOT_FORWARDED)


class _Abandoned(Exception):
    """Stops llhttp on a response that is being retried elsewhere."""
