"""The access log: one line per request and per WebSocket (at its close), for operators and
auditors (docs/configuration.md `access_log`, docs/operations.md).

An exchange records its end in one place (`Exchange._ended(outcome)`, balancer/http/exchange.py),
which hands it here with an explicit `outcome` (balancer/outcomes.py). Only when the line is wanted
(`sample`, `min_duration`) are its fields read and formatted: the request path pays for what is
written, and for a sampled-out request only the decision. A request refused before it became
an exchange (a malformed head) gives the fields known then (`refused`).

Each line is built straight into the batch, a bytearray (`put`, balancer/log_bytes.py), whose
lines leave together, copied, for the writer thread (balancer/log_sink.py): the event loop never
writes. At most MAX_PENDING bytes may wait; past that a line is dropped and
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
from .log_bytes import *  # put, put2: C in the compiled build (access_log.pxd), else Python
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
        self._buf = bytearray()  # the batch: whole lines up to _used, then room (or a dropped line)
        self._used = 0
        self._lines = 0  # in the batch
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
        status = ex.status
        if outcome in _SAMPLED and status < 500:
            if duration < self._min_duration or (self._sample < 1.0 and random() >= self._sample):
                return
        # The exchange's fields go to the formatter as they are: no record object per line.
        client = ex.client
        head = ex.head
        version = head.version
        head_at = ex.head_at
        route = ex.route
        pool = ex.pool
        tried = ex.tried  # the last one tried, even if the exchange let go of it (client_lost)
        now = wall_clock()
        self._line(
            now - duration, ex.request_id, client.client_ip, ex.country, ex.region,
            client.listener.name, client.tls_version, head.method, head.host, head.target,
            "HTTP/1.1" if version == b"1.1" else "HTTP/2.0" if version == b"2.0" else "HTTP/1.0",
            status, ex.bytes_in, ex.bytes_out, duration, ex.connect_time,
            head_at - ex.sent_at if head_at > 0 else -1.0,
            route.name if route is not None else None, pool.name if pool is not None else None,
            tried[-1].id if tried else None, len(tried), ex.sticky, outcome,
            head.header(b"user-agent"),
            head.header(b"referer") if self._combined else None)  # only combined writes it

    def refused(self, client: ClientConnection, status: int, request_id: str, bytes_out: int) -> None:
        """A request refused while its head was read (no method or target to tell)."""
        self._line(wall_clock(), request_id, client.client_ip, None, None, client.listener.name,
                   client.tls_version, b"", "", b"", "HTTP/1.1", status, 0, bytes_out, 0.0, -1.0,
                   -1.0, None, None, None, 0, "none", STATUS_OUTCOME.get(status, BAD_REQUEST),
                   None, None)

    def _line(self, time: float, request_id: str, client_ip: str, country: str | None,
              region: str | None, listener: str, tls: str | None, method: bytes, host: str,
              target: bytes, protocol: str, status: int, bytes_in: int, bytes_out: int,
              duration: float, connect: float, wait: float, route: str | None, pool: str | None,
              backend: str | None, tries: int, sticky: str, outcome: str,
              user_agent: bytes | None, referer: bytes | None) -> None:
        """Write one line of these fields (docs/configuration.md `access_log`) at the end of the
        batch; it counts as written to the batch only once `_commit` keeps it. `time` is the
        Unix time the request head arrived; the others are seconds, a negative one unknown
        (null): `connect` is 0 for a kept-alive connection, `wait` from request sent to
        response head. `tls` is "TLSv1.3" or the like, None on plain HTTP; `target` the path
        and query as sent."""
        if self._writer is None:
            self._dropped += 1
            return
        if self._truncate:
            client_ip = self._truncated(client_ip)
        clock = self._clock
        buf = self._buf
        start = self._used
        # A line over LINE_MAX is written again with the SHORT limits (over the first).
        for limits in (LONG, SHORT):
            if self._combined:
                end = put(buf, start, combined_line(
                    clock, limits, time, request_id, client_ip, method, target, protocol,
                    status, bytes_out, backend, user_agent, referer))
            else:
                end = json_into(buf, start, clock, limits, time, request_id, client_ip, country,
                                region, listener, tls, method, host, target, protocol, status,
                                bytes_in, bytes_out, duration, connect, wait, route, pool,
                                backend, tries, sticky, outcome, user_agent)
            if end - start <= LINE_MAX:
                break
        self._commit(end - start)

    def _commit(self, size: int) -> None:
        """Keep the `size` bytes just written after the batch's end as its next line, or drop
        them (they are written over by the next line) when MAX_PENDING would be passed."""
        if self._queued - self._done + size > MAX_PENDING:
            self._dropped += 1
            return
        self._used += size
        self._lines += 1
        self._queued += size
        if self._used >= BATCH_BYTES:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_later(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        handle = self._flush_handle
        if handle is not None:
            self._flush_handle = None
            handle.cancel()
        if self._used and self._writer is not None:
            # A copy leaves (one memcpy a batch): the buffer, grown once, takes the next lines.
            self._writer.put(bytes(memoryview(self._buf)[:self._used]), self._lines)
            self._used = 0
            self._lines = 0

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
    """RFC 3339 and combined-log times: the date part formatted once per second, the
    milliseconds looked up."""

    __slots__ = fields(__name__, "_Clock")  # its .pxd declares them

    def __init__(self) -> None:
        self._second = -1
        self._rfc3339 = ""
        self._clf = ""

    def _at(self, second: int) -> None:
        t = gmtime(second)
        self._second = second
        self._rfc3339 = "%04d-%02d-%02dT%02d:%02d:%02d" % t[:6]
        self._clf = "%02d/%s/%04d:%02d:%02d:%02d +0000" % (t[2], _MONTHS[t[1] - 1], t[0], t[3], t[4], t[5])

    def put_rfc3339(self, buf: bytearray, at: int, t: float) -> int:
        """Write the RFC 3339 time of `t` into `buf` at `at` (as `put`): two pieces, no
        string made for the stamp."""
        millis = int(t * 1000)
        second = millis // 1000
        if second != self._second:
            self._at(second)
        return put(buf, put(buf, at, self._rfc3339), _MILLIS_Z[millis - second * 1000])

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
# Runs of fields that repeat together, keyed by their values (json_into).
_SEGMENTS: dict[tuple, str] = {}
_SEGMENTS_MAX = 4096
_SEGMENT_CHARS = 512
# Plain paths and user agents up to this many bytes, as JSON strings (_json_bytes).
_PLAIN_JSON: dict[bytes, str] = {}
_PLAIN_BYTES = 64


def json_into(buf: bytearray, at: int, clock: _Clock, limits: tuple[int, int, int, int],
              time: float, request_id: str, client_ip: str, country: str | None,
              region: str | None, listener: str, tls: str | None, method: bytes, host: str,
              target: bytes, protocol: str, status: int, bytes_in: int, bytes_out: int,
              duration: float, connect: float, wait: float, route: str | None, pool: str | None,
              backend: str | None, tries: int, sticky: str, outcome: str,
              user_agent: bytes | None) -> int:
    """Write the JSON line of these fields (as AccessLog._line) into `buf` at `at`, the fields
    in docs/configuration.md order; return where it ends. Each piece is copied where it goes:
    no string is made for the line (compiled, `put` is a memcpy)."""
    q = _query_at(target)
    if q < 0:
        path = _PATHS.json(target, limits[0]) if target else "null"
        query = "null"
    else:
        path = _PATHS.json(target[:q], limits[0])
        query = _json_bytes(target[q + 1:], limits[1])
    request_part = _request_part(country, region, listener, tls, method, host)
    backend_part = _backend_part(route, pool, backend)
    # The request id and the host hold no character JSON would escape (the request reader
    # checks them: headers.request_id_from, parser.split_host), nor do the protocol, sticky and
    # outcome names (constants of the exchange and balancer/outcomes.py).
    at = clock.put_rfc3339(buf, put(buf, at, b'{"time":"'), time)
    at = put2(buf, at, b'","request_id":"', request_id)
    at = put2(buf, at, b'","client_ip":', _quoted_ip(client_ip))
    at = put2(buf, at, b",", request_part)
    at = put2(buf, at, b'"path":', path)
    at = put2(buf, at, b',"query":', query)
    at = put2(buf, at, b',"protocol":"', protocol)
    at = put2(buf, at, b'","status":', _number(status))
    at = put2(buf, at, b',"bytes_in":', _number(bytes_in))
    at = put2(buf, at, b',"bytes_out":', _number(bytes_out))
    at = _put_ms(buf, put(buf, at, b',"duration_ms":'), duration)
    at = _put_ms(buf, put(buf, at, b',"upstream_connect_ms":'), connect)
    at = _put_ms(buf, put(buf, at, b',"upstream_wait_ms":'), wait)
    at = put2(buf, at, b",", backend_part)
    at = put2(buf, at, b'"tries":', _number(tries))
    at = put2(buf, at, b',"sticky":"', sticky)
    at = put2(buf, at, b'","outcome":"', outcome)
    at = put2(buf, at, b'","user_agent":',
              _AGENTS.json(user_agent, limits[2]) if user_agent is not None else "null")
    return put(buf, at, b"}\n")


# The latest line's runs of fields, their values and their piece last: the next line, nearly
# always from the same listener, country, host and pool, compares values instead of hashing a
# tuple of them for _SEGMENTS (measured: 0.5k instructions a look-up).
_UNSET = object()
_last_request: tuple = (_UNSET,) * 6 + ("",)
_last_backend: tuple = (_UNSET,) * 3 + ("",)


def _request_part(country: str | None, region: str | None, listener: str, tls: str | None,
                  method: bytes, host: str) -> str:
    global _last_request
    last = _last_request
    if (_same(country, last[0]) and _same(region, last[1]) and _same(listener, last[2])
            and _same(tls, last[3]) and _same(method, last[4]) and _same(host, last[5])):
        return last[6]
    key = (country, region, listener, tls, method, host)
    part = _SEGMENTS.get(key)
    if part is None:
        part = _remember(key, (
            f'"country":{_quoted(country)},"region":{_quoted(region)},'
            f'"listener":{_quoted(listener)},"tls":{_quoted(tls)},'
            f'"method":{_quoted(method or None)},"host":{_quoted(host or None)},'))
    _last_request = key + (part,)
    return part


def _backend_part(route: str | None, pool: str | None, backend: str | None) -> str:
    global _last_backend
    last = _last_backend
    if _same(route, last[0]) and _same(pool, last[1]) and _same(backend, last[2]):
        return last[3]
    key = (route, pool, backend)
    part = _SEGMENTS.get(key)
    if part is None:
        part = _remember(key, (
            f'"route":{_quoted(route)},"pool":{_quoted(pool)},"backend":{_quoted(backend)},'))
    _last_backend = key + (part,)
    return part


def _same(a: object, b: object) -> bool:
    return a is b or (type(a) is type(b) and a == b)  # b"GET" is not "GET", nor None ""


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


# The latest client address and its JSON: the next line's is most often the same.
_last_ip = ""
_last_ip_json = '""'


def _quoted_ip(ip: str) -> str:
    global _last_ip, _last_ip_json
    if ip != _last_ip:
        _last_ip_json = _quoted(ip)
        _last_ip = ip
    return _last_ip_json


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


class _Remembered:
    """The latest value of one field (the path, the user agent) and its JSON: compared, not
    hashed, since the next request's is most often the same (a new bytes object each time,
    whose hash would be computed anew for _PLAIN_JSON)."""

    __slots__ = fields(__name__, "_Remembered")  # its .pxd declares them

    def __init__(self) -> None:
        self.value = b""
        self.text = '""'

    def json(self, value: bytes, limit: int) -> str:
        if value == self.value:
            return self.text
        text = _json_bytes(value, limit)
        if len(value) <= _PLAIN_BYTES:  # its JSON then does not depend on the limit
            self.value = value
            self.text = text
        return text


_PATHS = _Remembered()
_AGENTS = _Remembered()


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


def _put_ms(buf: bytearray, at: int, seconds: float) -> int:
    """Write `seconds` as milliseconds with three decimals (null when unknown, negative) into
    `buf` at `at` (as `put`): two looked-up pieces, no float formatted."""
    if seconds < 0:
        return put(buf, at, b"null")
    micros = int(seconds * 1000000)
    return put(buf, put(buf, at, _number(micros // 1000)), _MILLIS[micros % 1000])


# Apache/nginx "combined", then the request id and the backend:
# 203.0.113.9 - - [03/Dec/2026:21:14:07 +0000] "POST /bet HTTP/1.1" 200 512 "-" "Mozilla/5.0" 7f3c... game-eu-1
_COMBINED_LINE = '%s - - [%s] "%s %s %s" %d %d "%s" "%s" %s %s\n'
_UNSAFE = re.compile(rb'[^\x20-\x7e]|["\\]')


def combined_line(clock: _Clock, limits: tuple[int, int, int, int], time: float, request_id: str,
                  client_ip: str, method: bytes, target: bytes, protocol: str, status: int,
                  bytes_out: int, backend: str | None, user_agent: bytes | None,
                  referer: bytes | None) -> bytes:
    if len(target) > limits[0] + limits[1]:
        target = target[:limits[0] + limits[1]] + b"..."
    return (_COMBINED_LINE % (
        client_ip or "-", clock.clf(time), _text(method or b"-", 16), _text(target or b"-", 4096),
        protocol, status, bytes_out, _text(referer, limits[3]),
        _text(user_agent, limits[2]), request_id or "-", backend or "-",
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
