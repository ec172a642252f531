# Types for the compiled build of access_log.py (see balancer/compiled.py): a line is built
# for every request that is logged, so the module runs compiled like the rest of the request path.

cimport cython

from .http.exchange cimport Exchange

cdef frozenset _SAMPLED
cdef dict _QUOTED, _SEGMENTS, _PLAIN_JSON
cdef Py_ssize_t _NUMBERS_MAX, _QUOTED_MAX, _SEGMENTS_MAX, _SEGMENT_CHARS, _PLAIN_BYTES, MAX_PENDING, BATCH_BYTES, LINE_MAX
cdef tuple LONG, SHORT, _MILLIS, _MILLIS_Z, _NUMBERS
cdef str _COMBINED_LINE

# log_bytes.py's put, in C: copy bytes, or an ASCII str's characters (a str beyond ASCII as
# UTF-8), into a bytearray at `at`, growing it to twice what is needed when it is short; put2
# puts two pieces (a field's name, its value).
cdef extern from *:
    """
    #if defined(__GNUC__)
    __attribute__((always_inline))  /* 40 calls a line: the call itself cost a fifth */
    #endif
    static inline Py_ssize_t balancer_access_log_put(PyObject *buf, Py_ssize_t at, PyObject *piece) {
        const char *data;
        Py_ssize_t n;
        if (PyBytes_CheckExact(piece)) {
            data = PyBytes_AS_STRING(piece);
            n = PyBytes_GET_SIZE(piece);
        } else if (PyUnicode_CheckExact(piece) && ((PyASCIIObject *)piece)->state.compact
                   && ((PyASCIIObject *)piece)->state.ascii) {
            /* PyUnicode_IS_COMPACT_ASCII and PyUnicode_DATA, spelt out: the functions they
               are in 3.11 were not inlined, and cost as much as the copy */
            data = (const char *)(((PyASCIIObject *)piece) + 1);
            n = ((PyASCIIObject *)piece)->length;
        } else {
            data = PyUnicode_AsUTF8AndSize(piece, &n);
            if (data == NULL) return -1;
        }
        if (at + n > PyByteArray_GET_SIZE(buf) && PyByteArray_Resize(buf, (at + n) * 2) < 0)
            return -1;
        memcpy(PyByteArray_AS_STRING(buf) + at, data, (size_t)n);
        return at + n;
    }
    #if defined(__GNUC__)
    __attribute__((always_inline))
    #endif
    static inline Py_ssize_t balancer_access_log_put2(PyObject *buf, Py_ssize_t at, PyObject *before, PyObject *value) {
        at = balancer_access_log_put(buf, at, before);
        return at < 0 ? at : balancer_access_log_put(buf, at, value);
    }
    """
    Py_ssize_t put "balancer_access_log_put"(bytearray buf, Py_ssize_t at, object piece) except -1
    Py_ssize_t put2 "balancer_access_log_put2"(bytearray buf, Py_ssize_t at, object before,
                                               object value) except -1
cdef object _json_string, _UNSAFE, wall_clock, gmtime, perf_counter


cdef class AccessLog:
    cdef public object loop, config
    cdef public bint on
    cdef object _writer, _flush_handle
    cdef bint _combined, _truncate
    cdef double _sample, _min_duration
    cdef bytearray _buf
    cdef Py_ssize_t _used, _lines, _queued, _dropped, _done, _written, _failed
    cdef _Clock _clock
    cdef dict _ips

    @cython.locals(now=cython.double, duration=cython.double, status=cython.int, head_at=cython.double, tried=list, version=bytes)
    cpdef exchange_ended(self, Exchange ex, str outcome)
    cpdef refused(self, object client, int status, str request_id, Py_ssize_t bytes_out)
    @cython.locals(start=Py_ssize_t, end=Py_ssize_t, buf=bytearray, clock=_Clock, limits=tuple)
    cdef _line(self, double time, str request_id, str client_ip, object country, object region,
               str listener, object tls, bytes method, str host, bytes target, str protocol,
               int status, Py_ssize_t bytes_in, Py_ssize_t bytes_out, double duration,
               double connect, double wait, object route, object pool, object backend, int tries,
               str sticky, str outcome, object user_agent, object referer)
    cdef _commit(self, Py_ssize_t size)
    cpdef _flush(self)
    cdef str _truncated(self, str ip)


cdef class _Clock:
    cdef long long _second
    cdef str _rfc3339, _clf

    cdef _at(self, long long second)
    @cython.locals(millis=cython.longlong, second=cython.longlong)
    cdef Py_ssize_t put_rfc3339(self, bytearray buf, Py_ssize_t at, double t) except -1
    cpdef str clf(self, double t)


@cython.locals(q=Py_ssize_t, path=str, query=str, request_part=str, backend_part=str)
cpdef Py_ssize_t json_into(bytearray buf, Py_ssize_t at, _Clock clock, tuple limits, double time,
                           str request_id, str client_ip, object country, object region,
                           str listener, object tls, bytes method, str host, bytes target,
                           str protocol, int status, Py_ssize_t bytes_in, Py_ssize_t bytes_out,
                           double duration, double connect, double wait, object route,
                           object pool, object backend, int tries, str sticky, str outcome,
                           object user_agent) except -1
cdef object _UNSET
cdef tuple _last_request, _last_backend
@cython.locals(last=tuple, key=tuple, part=str)
cdef str _request_part(object country, object region, str listener, object tls, bytes method, str host)
@cython.locals(last=tuple, key=tuple, part=str)
cdef str _backend_part(object route, object pool, object backend)
cdef inline bint _same(object a, object b)


cdef class _Remembered:
    cdef bytes value
    cdef str text

    @cython.locals(text=str)
    cdef str json(self, bytes value, Py_ssize_t limit)


cdef _Remembered _PATHS, _AGENTS
cdef str _quoted(object value)
cdef str _remember(tuple key, str part)
@cython.locals(i=Py_ssize_t)
cdef Py_ssize_t _query_at(bytes target)
@cython.locals(c=cython.uchar)
cdef bint _plain(bytes value)
@cython.locals(known=str, text=str)
cdef str _json_bytes(bytes value, Py_ssize_t limit)
cdef inline str _number(Py_ssize_t n)
@cython.locals(micros=cython.longlong)
cdef Py_ssize_t _put_ms(bytearray buf, Py_ssize_t at, double seconds) except -1
cdef str _last_ip, _last_ip_json
cdef str _quoted_ip(str ip)
cpdef bytes combined_line(_Clock clock, tuple limits, double time, str request_id, str client_ip,
                          bytes method, bytes target, str protocol, int status,
                          Py_ssize_t bytes_out, object backend, object user_agent, object referer)
cdef str _text(object value, Py_ssize_t limit)
