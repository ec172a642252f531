"""The access log: one line per request and per WebSocket (at its close), for operators and
auditors (docs/configuration.md `access_log`, docs/operations.md).

An exchange records its end in one place (`Exchange._ended(outcome)`, balancer/http/exchange.py),
which hands it here with an explicit `outcome` (balancer/outcomes.py). Only when the line is wanted
(`sample`, `min_duration`) is an `AccessRecord` filled from it and formatted: the request path
pays for what is written, and for a sampled-out request only the decision. A request refused
before it became an exchange (a malformed head) fills a record itself (`refused_record`).

Lines wait in a list and leave in batches for the writer thread (balancer/log_sink.py): the
event loop never writes. At most MAX_PENDING bytes may wait; past that a line is dropped and
counted (balancer_access_log_dropped_total), so a sink that cannot keep up costs lines, never
requests.
"""

from __future__ import annotations

import asyncio
import re
from json.encoder import encode_basestring_ascii as _json_string
from random import random
from time import gmtime, perf_counter
from time import time as wall_clock
from typing import TYPE_CHECKING

from .addresses import parse_ip
from .compiled import fields
from .config import AccessLogConfig
from .log_sink import LogWriter
from .outcomes import BAD_REQUEST, OK, STATUS_OUTCOME, WEBSOCKET_CLOSED

if TYPE_CHECKING:
    from .http.client_side import ClientConnection
    from .http.exchange import Exchange

# Outcomes that `sample` and `min_duration` apply to (with a status below 500); every other
# line is always written: the balancer's own answers and failures are what audits look for.
_SAMPLED = frozenset({OK, WEBSOCKET_CLOSED})

# Lines wait for the writer thread up to this many bytes (per process); past that they are dropped.
MAX_PENDING = 1024 * 1024
# A batch leaves when it is this big, or FLUSH_DELAY after its first line. Few and big: each
# hand-over wakes the writer thread, which then needs the GIL (measured: at 32 KiB the
# hand-overs cost more CPU than formatting the lines).
BATCH_BYTES = 256 * 1024
FLUSH_DELAY = 0.25
# Values from the request are cut to these lengths (in characters, "..." appended), and once
# more to the short ones if a line would still exceed LINE_MAX: a line then always fits one
# atomic pipe write (PIPE_BUF, 4096 on Linux), so workers never interleave on stdout.
LONG = (1024, 1024, 256, 256)  # path, query, user agent, referer
SHORT = (128, 128, 64, 64)  # none below _PLAIN_BYTES (_json_bytes)
LINE_MAX = 4000

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class AccessRecord:
    """What one line says. Filled from an exchange at its end (`record_of`), or for a request
    refused before it became one (`refused_record`); formatted by `json_line` or
    `combined_line`. Times are seconds; a negative one is unknown (null)."""

    __slots__ = fields(__name__, "AccessRecord")  # its .pxd declares them

    def __init__(self) -> None:
        self.time = 0.0  # Unix time the request head arrived
        self.request_id = ""
        self.client_ip = ""
        self.country: str | None = None
        self.region: str | None = None
        self.listener = ""
        self.tls: str | None = None  # "TLSv1.3", or None on plain HTTP
        self.method = b""
        self.host = ""
        self.target = b""  # path and query, as sent
        self.protocol = "HTTP/1.1"
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.duration = 0.0
        self.upstream_connect = -1.0  # 0 for a kept-alive connection
        self.upstream_wait = -1.0  # from request sent to response head
        self.route: str | None = None
        self.pool: str | None = None
        self.backend: str | None = None
        self.tries = 0
        self.sticky = "none"
        self.outcome = OK
        self.user_agent: bytes | None = None
        self.referer: bytes | None = None


def record_of(ex: Exchange, outcome: str, duration: float, referer: bool) -> AccessRecord:
    """The record of an exchange that ended with `outcome` after `duration` seconds (with its
    Referer header if `referer`: only the combined format writes it)."""
    record = AccessRecord()
    client = ex.client
    head = ex.head
    record.time = wall_clock() - duration
    record.request_id = ex.request_id
    record.client_ip = client.client_ip
    record.country = ex.country
    record.region = ex.region
    record.listener = client.listener.name
    record.tls = client.tls_version
    record.method = head.method
    record.host = head.host
    record.target = head.target
    version = head.version
    record.protocol = ("HTTP/1.1" if version == b"1.1" else "HTTP/2.0" if version == b"2.0"
                       else "HTTP/1.0")
    record.status = ex.status
    record.bytes_in = ex.bytes_in
    record.bytes_out = ex.bytes_out
    record.duration = duration
    record.upstream_connect = ex.connect_time
    head_at = ex.head_at
    if head_at > 0:
        record.upstream_wait = head_at - ex.sent_at
    route = ex.route
    if route is not None:
        record.route = route.name
    pool = ex.pool
    if pool is not None:
        record.pool = pool.name
    tried = ex.tried  # the last one tried, even if the exchange let go of it (client_lost)
    if tried:
        record.backend = tried[-1].id
    record.tries = len(tried)
    record.sticky = ex.sticky
    record.outcome = outcome
    record.user_agent = head.header(b"user-agent")
    if referer:
        record.referer = head.header(b"referer")
    return record


def refused_record(client: ClientConnection, status: int, request_id: str,
                   bytes_out: int) -> AccessRecord:
    """A request refused while its head was read (no method or target to tell)."""
    record = AccessRecord()
    record.time = wall_clock()
    record.request_id = request_id
    record.client_ip = client.client_ip
    record.listener = client.listener.name
    record.tls = client.tls_version
    record.status = status
    record.bytes_out = bytes_out
    record.outcome = STATUS_OUTCOME.get(status, BAD_REQUEST)
    return record


class AccessLog:
    """This process's access log. One object for the life of the process: reloads reconfigure
    it, so a WebSocket opened under an old config is still logged when it closes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.config: AccessLogConfig | None = None
        self.on = False  # what the request path checks
        self._writer: LogWriter | None = None
        self._combined = False
        self._sample = 1.0
        self._min_duration = 0.0
        self._truncate = False
        self._batch: list[bytes] = []
        self._batch_size = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._queued = 0  # bytes handed over (loop thread only)
        self._dropped = 0  # lines dropped for want of room (loop thread only)
        self._done = 0  # bytes the writer finished with (writer thread only)
        self._written = 0  # lines written (writer thread only)
        self._failed = 0  # lines the sink refused (writer thread only)
        self._clock = _Clock()
        self._ips: dict[str, str] = {}

    # -- counters (balancer_access_log_lines_total, balancer_access_log_dropped_total) -----

    @property
    def lines(self) -> int:
        return self._written

    @property
    def dropped(self) -> int:
        return self._dropped + self._failed

    # -- configuration ----------------------------------------------------------------------

    def open_writer(self, config: AccessLogConfig | None) -> LogWriter | None:
        """The writer `configure` will need for `config`: a new one when the sink changes
        (raises OSError if it cannot be opened), else None. Separate so that a reload opens
        it before changing anything, and can stop it again if something else fails."""
        if config is None or (self.config is not None and self.config.path == config.path):
            return None
        return LogWriter(config.path, self._writer_done)

    def configure(self, config: AccessLogConfig | None, writer: LogWriter | None) -> None:
        self._flush()
        if config is None or writer is not None:
            old = self._writer
            self._writer = writer
            if old is not None:
                old.stop()  # after the lines already queued to it
        self.config = config
        self.on = config is not None
        if config is not None:
            self._combined = config.format == "combined"
            self._sample = config.sample
            self._min_duration = config.min_duration
            self._truncate = config.client_ip == "truncated"

    def reopen(self) -> None:
        """SIGUSR1 (logrotate's postrotate): lines so far go to the old file, later ones to a
        file newly opened at the configured path."""
        if self._writer is not None:
            self._flush()
            self._writer.reopen()

    # -- what the request path calls -----------------------------------------------------

    def exchange_ended(self, ex: Exchange, outcome: str) -> None:
        duration = perf_counter() - ex.started
        if outcome in _SAMPLED and ex.status < 500:
            if duration < self._min_duration or (self._sample < 1.0 and random() >= self._sample):
                return
        self.write(record_of(ex, outcome, duration, self._combined))

    def refused(self, client: ClientConnection, status: int, request_id: str, bytes_out: int) -> None:
        self.write(refused_record(client, status, request_id, bytes_out))

    def write(self, record: AccessRecord) -> None:
        if self._truncate:
            record.client_ip = self._truncated(record.client_ip)
        clock = self._clock
        if self._combined:
            line = combined_line(record, clock, LONG)
            if len(line) > LINE_MAX:
                line = combined_line(record, clock, SHORT)
        else:
            line = json_line(record, clock, LONG)
            if len(line) > LINE_MAX:
                line = json_line(record, clock, SHORT)
        self._add(line)

    def _add(self, line: bytes) -> None:
        size = len(line)
        if self._queued - self._done + size > MAX_PENDING or self._writer is None:
            self._dropped += 1
            return
        self._batch.append(line)
        self._batch_size += size
        self._queued += size
        if self._batch_size >= BATCH_BYTES:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_later(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        handle = self._flush_handle
        if handle is not None:
            self._flush_handle = None
            handle.cancel()
        batch = self._batch
        if batch and self._writer is not None:
            self._writer.put(batch, self._batch_size)
            self._batch = []
            self._batch_size = 0

    def _writer_done(self, size: int, written: int, failed: int) -> None:
        """In the writer thread: each counter here is written by that thread only."""
        self._done += size
        self._written += written
        self._failed += failed

    def _truncated(self, ip: str) -> str:
        """IPv4 to its /24, IPv6 to its /48 (remembered: players come back)."""
        short = self._ips.get(ip)
        if short is None:
            short = truncate_ip(ip)
            if len(self._ips) >= 65536:
                self._ips.clear()
            self._ips[ip] = short
        return short

    # -- flushing and closing ---------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until every line so far is written (or refused by the sink)."""
        self._flush()
        writer = self._writer
        if writer is None:
            return
        loop = self.loop
        done = loop.create_future()

        def mark() -> None:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        writer.mark(mark)
        await done

    async def close(self, timeout: float = 2.0) -> None:
        """At shutdown: write what is left (for up to `timeout`: a stuck sink must not hold
        the exit), then stop the writer."""
        if self._writer is None:
            return
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except asyncio.TimeoutError:
            pass
        self.configure(None, None)


def truncate_ip(ip: str) -> str:
    address = parse_ip(ip)
    if address is None:
        return ip
    if address.version == 4:
        return str(address).rsplit(".", 1)[0] + ".0"
    return str(address.__class__(int(address) >> 80 << 80))


class _Clock:
    """RFC 3339 and combined-log times: the date part formatted once per second, the RFC 3339
    stamp once per millisecond (lines written in the same millisecond share it)."""

    __slots__ = fields(__name__, "_Clock")  # its .pxd declares them

    def __init__(self) -> None:
        self._second = -1
        self._millis = -1
        self._rfc3339 = ""
        self._stamp = ""
        self._clf = ""

    def _at(self, second: int) -> None:
        t = gmtime(second)
        self._second = second
        self._rfc3339 = "%04d-%02d-%02dT%02d:%02d:%02d" % t[:6]
        self._clf = "%02d/%s/%04d:%02d:%02d:%02d +0000" % (t[2], _MONTHS[t[1] - 1], t[0], t[3], t[4], t[5])

    def rfc3339(self, t: float) -> str:
        millis = int(t * 1000)
        if millis == self._millis:
            return self._stamp
        second = millis // 1000
        if second != self._second:
            self._at(second)
        self._millis = millis
        self._stamp = self._rfc3339 + _MILLIS_Z[millis - second * 1000]
        return self._stamp

    def clf(self, t: float) -> str:
        second = int(t)
        if second != self._second:
            self._at(second)
        return self._clf


# -- formats ------------------------------------------------------------------------------------

# ".000Z" ... ".999Z" and ".000" ... ".999": milliseconds without formatting a float.
_MILLIS_Z = tuple(".%03dZ" % i for i in range(1000))
_MILLIS = tuple(".%03d" % i for i in range(1000))
# 0 ... 9999 as text, made once: statuses, tries, most byte counts and durations in
# milliseconds are below it, so most numbers of a line are looked up rather than formatted.
_NUMBERS = tuple(str(i) for i in range(10000))
_NUMBERS_MAX = 10000
# Values that repeat (names from the config, countries, hosts, methods, client addresses) as
# JSON strings, escaped once. Bounded: a value a client chose could otherwise fill it.
_QUOTED: dict[object, str] = {None: "null"}
_QUOTED_MAX = 4096
# Runs of fields that repeat together, keyed by their values (json_line).
_SEGMENTS: dict[tuple, str] = {}
_SEGMENTS_MAX = 4096
_SEGMENT_CHARS = 512
# Plain paths and user agents up to this many bytes, as JSON strings (_json_bytes).
_PLAIN_JSON: dict[bytes, str] = {}
_PLAIN_BYTES = 64


def json_line(r: AccessRecord, clock: _Clock, limits: tuple[int, int, int, int]) -> bytes:
    target = r.target
    q = _query_at(target)
    if q < 0:
        path = _json_bytes(target, limits[0]) if target else "null"
        query = "null"
    else:
        path = _json_bytes(target[:q], limits[0])
        query = _json_bytes(target[q + 1:], limits[1])
    user_agent = r.user_agent
    duration = _micros(r.duration)
    connect = _micros(r.upstream_connect)
    wait = _micros(r.upstream_wait)
    # Fields that repeat together (from the config, the connection and the request's head)
    # as one remembered piece each: one dict look-up instead of a _quoted() per field.
    request_key = (r.country, r.region, r.listener, r.tls, r.method, r.host)
    request_part = _SEGMENTS.get(request_key)
    if request_part is None:
        request_part = _remember(request_key, (
            f'"country":{_quoted(r.country)},"region":{_quoted(r.region)},'
            f'"listener":{_quoted(r.listener)},"tls":{_quoted(r.tls)},'
            f'"method":{_quoted(r.method or None)},"host":{_quoted(r.host or None)},'))
    backend_key = (r.route, r.pool, r.backend)
    backend_part = _SEGMENTS.get(backend_key)
    if backend_part is None:
        backend_part = _remember(backend_key, (
            f'"route":{_quoted(r.route)},"pool":{_quoted(r.pool)},"backend":{_quoted(r.backend)},'))
    # One f-string, the fields in docs/configuration.md order: compiled, it is one join whose
    # pieces are counted beforehand (no list, no format string to parse).
    # The request id and the host hold no character JSON would escape (the request reader
    # checks them: headers.request_id_from, parser.split_host), nor do the protocol, sticky and
    # outcome names (constants of the exchange and balancer/outcomes.py).
    return (
        f'{{"time":"{clock.rfc3339(r.time)}","request_id":"{r.request_id}",'
        f'"client_ip":{_quoted(r.client_ip)},{request_part}'
        f'"path":{path},"query":{query},"protocol":"{r.protocol}","status":{_number(r.status)},'
        f'"bytes_in":{_number(r.bytes_in)},"bytes_out":{_number(r.bytes_out)},'
        f'"duration_ms":{_whole_ms(duration)}{_ms_fraction(duration)},'
        f'"upstream_connect_ms":{_whole_ms(connect)}{_ms_fraction(connect)},'
        f'"upstream_wait_ms":{_whole_ms(wait)}{_ms_fraction(wait)},{backend_part}'
        f'"tries":{_number(r.tries)},"sticky":"{r.sticky}","outcome":"{r.outcome}",'
        f'"user_agent":{_json_bytes(user_agent, limits[2]) if user_agent is not None else "null"}}}\n'
    ).encode()


def _remember(key: tuple, part: str) -> str:
    """Keep `part` for the next line with the same values. Bounded in count and size: a host
    comes from the player, who could send a new long one every time."""
    if len(part) <= _SEGMENT_CHARS:
        if len(_SEGMENTS) >= _SEGMENTS_MAX:
            _SEGMENTS.clear()
        _SEGMENTS[key] = part
    return part


def _quoted(value: object) -> str:
    """A str, bytes (a method) or None as JSON, remembered for the values that repeat."""
    quoted = _QUOTED.get(value)
    if quoted is None:
        quoted = _json_string(value.decode("latin-1") if isinstance(value, bytes) else value)
        if len(_QUOTED) < _QUOTED_MAX and len(value) <= 64:  # type: ignore[arg-type]
            _QUOTED[value] = quoted
    return quoted


def _query_at(target: bytes) -> int:
    """Where the query's "?" is in a request target, or -1 (compiled: a C loop)."""
    for i in range(len(target)):
        if target[i] == 63:  # "?"
            return i
    return -1


def _plain(value: bytes) -> bool:
    """Whether every byte may stand in a JSON string as it is: printable ASCII but `"` and
    `\\`. Nearly every path and user agent is; only the others are decoded and escaped."""
    for c in value:
        if c < 0x20 or c > 0x7E or c == 0x22 or c == 0x5C:
            return False
    return True


def _json_bytes(value: bytes, limit: int) -> str:
    """Bytes from the request as a JSON string (non-UTF-8 bytes as \\xHH escapes), cut to
    `limit` characters. Short plain values (most paths and user agents repeat) are remembered:
    no limit is below _PLAIN_BYTES, so none of them is ever cut."""
    known = _PLAIN_JSON.get(value)
    if known is not None:
        return known
    if _plain(value):
        if len(value) > limit:
            return f'"{value[:limit].decode("ascii")}..."'
        text = f'"{value.decode("ascii")}"'
        if len(value) <= _PLAIN_BYTES:
            if len(_PLAIN_JSON) >= _QUOTED_MAX:
                _PLAIN_JSON.clear()
            _PLAIN_JSON[value] = text
        return text
    text = value.decode("utf-8", "backslashreplace")
    if len(text) > limit:
        text = text[:limit] + "..."
    return _json_string(text)


def _number(n: int) -> str:
    return _NUMBERS[n] if 0 <= n < _NUMBERS_MAX else str(n)


def _micros(seconds: float) -> int:
    """Seconds as whole microseconds, -1 when unknown (negative)."""
    return int(seconds * 1000000) if seconds >= 0 else -1


# A duration in milliseconds with three decimals, as two looked-up pieces ("null" and "" when
# unknown): no float is formatted, no string concatenated.
def _whole_ms(micros: int) -> str:
    return _number(micros // 1000) if micros >= 0 else "null"


def _ms_fraction(micros: int) -> str:
    return _MILLIS[micros % 1000] if micros >= 0 else ""


# Apache/nginx "combined", then the request id and the backend:
# 203.0.113.9 - - [03/Dec/2026:21:14:07 +0000] "POST /bet HTTP/1.1" 200 512 "-" "Mozilla/5.0" 7f3c... game-eu-1
_COMBINED_LINE = '%s - - [%s] "%s %s %s" %d %d "%s" "%s" %s %s\n'
_UNSAFE = re.compile(rb'[^\x20-\x7e]|["\\]')


def combined_line(r: AccessRecord, clock: _Clock, limits: tuple[int, int, int, int]) -> bytes:
    target = r.target
    if len(target) > limits[0] + limits[1]:
        target = target[:limits[0] + limits[1]] + b"..."
    return (_COMBINED_LINE % (
        r.client_ip or "-", clock.clf(r.time), _text(r.method or b"-", 16), _text(target or b"-", 4096),
        r.protocol, r.status, r.bytes_out, _text(r.referer, limits[3]),
        _text(r.user_agent, limits[2]), r.request_id or "-", r.backend or "-",
    )).encode()


def _text(value: bytes | None, limit: int) -> str:
    """A quoted field of the combined format: as nginx writes it, `"`, `\\`, control and
    non-ASCII bytes as \\xHH; "-" when absent."""
    if not value:
        return "-"
    if len(value) > limit:
        value = value[:limit] + b"..."
    if _UNSAFE.search(value) is not None:
        value = _UNSAFE.sub(lambda m: b"\\x%02X" % m.group()[0], value)
    return value.decode("ascii")
