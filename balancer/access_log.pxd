# Types for the compiled build of access_log.py (see balancer/compiled.py): a line is built
# for every request that is logged, so the module runs compiled like the rest of the request path.

cimport cython

from .http.exchange cimport Exchange

cdef frozenset _SAMPLED
cdef dict _QUOTED, _SEGMENTS, _PLAIN_JSON
cdef Py_ssize_t _NUMBERS_MAX, _QUOTED_MAX, _SEGMENTS_MAX, _SEGMENT_CHARS, _PLAIN_BYTES, MAX_PENDING, BATCH_BYTES, LINE_MAX
cdef tuple LONG, SHORT, _MILLIS, _MILLIS_Z, _NUMBERS
cdef str _COMBINED_LINE
cdef object _json_string, _UNSAFE, wall_clock, gmtime, perf_counter


cdef class AccessRecord:
    cdef public double time, duration, upstream_connect, upstream_wait
    cdef public str request_id, client_ip, listener, host, protocol, sticky, outcome
    cdef public object country, region, tls, route, pool, backend, user_agent, referer
    cdef public bytes method, target
    cdef public int status, tries
    cdef public Py_ssize_t bytes_in, bytes_out


cpdef AccessRecord record_of(Exchange ex, str outcome, double duration, bint referer)
cpdef AccessRecord refused_record(object client, int status, str request_id, Py_ssize_t bytes_out)


cdef class AccessLog:
    cdef public object loop, config
    cdef public bint on
    cdef object _writer, _flush_handle
    cdef bint _combined, _truncate
    cdef double _sample, _min_duration
    cdef list _batch
    cdef Py_ssize_t _batch_size, _queued, _dropped, _done, _written, _failed
    cdef _Clock _clock
    cdef dict _ips

    cpdef exchange_ended(self, Exchange ex, str outcome)
    cpdef refused(self, object client, int status, str request_id, Py_ssize_t bytes_out)
    cpdef write(self, AccessRecord record)
    @cython.locals(size=Py_ssize_t)
    cdef _add(self, bytes line)
    cpdef _flush(self)
    cdef str _truncated(self, str ip)


cdef class _Clock:
    cdef long long _second, _millis
    cdef str _rfc3339, _stamp, _clf

    cdef _at(self, long long second)
    @cython.locals(millis=cython.longlong, second=cython.longlong)
    cpdef str rfc3339(self, double t)
    cpdef str clf(self, double t)


@cython.locals(q=Py_ssize_t, path=str, query=str, user_agent=bytes, duration=cython.longlong,
               request_key=tuple, backend_key=tuple, request_part=str, backend_part=str,
               connect=cython.longlong, wait=cython.longlong)
cpdef bytes json_line(AccessRecord r, _Clock clock, tuple limits)
cdef str _quoted(object value)
cdef str _remember(tuple key, str part)
@cython.locals(i=Py_ssize_t)
cdef Py_ssize_t _query_at(bytes target)
@cython.locals(c=cython.uchar)
cdef bint _plain(bytes value)
@cython.locals(known=str, text=str)
cdef str _json_bytes(bytes value, Py_ssize_t limit)
cdef str _number(Py_ssize_t n)
cdef long long _micros(double seconds)
cdef str _whole_ms(long long micros)
cdef str _ms_fraction(long long micros)
cpdef bytes combined_line(AccessRecord r, _Clock clock, tuple limits)
cdef str _text(object value, Py_ssize_t limit)
