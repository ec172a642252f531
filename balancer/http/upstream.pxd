# Types for the compiled build of upstream.py (see balancer/compiled.py).
# exchange.pxd cimports this file and this one cimports it: a cycle of types is fine (each
# module creates its own types before importing the other's), as long as neither module's
# body imports names from the other at import time (exchange.py imports this module whole).

cimport cython

from ..pool cimport Backend
from .exchange cimport Exchange
from .headers cimport HeaderNames, join_bytes
from .llhttp_response cimport ResponseParser
from .timers cimport Deadline

cdef frozenset _WATCHED  # looked up per response header
cdef unsigned long long _WATCHED_LENGTHS


@cython.final
cdef class Outbox:
    cdef readonly object loop
    cdef list _waiting

    cpdef hold(self, UpstreamConnection conn)
    @cython.locals(waiting=list, conn=UpstreamConnection)
    cpdef send(self)


cdef Outbox _last_outbox

@cython.locals(outbox=Outbox)
cpdef Outbox outbox_of(object loop)


@cython.final  # never subclassed: its cpdef methods skip the look for a Python override
cdef class UpstreamConnection:
    cdef public Backend backend
    cdef public object loop, transport, tls_config
    cdef public ResponseParser parser
    cdef public Exchange exchange
    cdef public double last_used, idle_timeout
    cdef public bint closed, expect_head_only
    cdef public Deadline deadline
    cdef bytes _status_reason
    cdef list _headers
    cdef HeaderNames _names
    cdef int _framing
    cdef object _connection
    cdef bint _head_sent, _until_close, _tunnel, _reading_paused
    cdef public object pool
    cdef public Py_ssize_t max_head
    cdef Py_ssize_t _head_bytes, _head_size
    cdef bint _answered, _reused, _ours, _in_feed, _parked
    cdef Outbox _outbox
    cdef list _held

    cpdef start(self, Exchange exchange, bytes data, bint head_only, bint repeatable)
    cpdef drop_http_state(self)
    @cython.locals(held=list)
    cpdef send_held(self)
    cpdef abort(self)
    cpdef write(self, bytes data)
    cpdef release(self, double now)
    cdef _pool_idle(self, double now)
    cpdef bint at_risk(self)
    cpdef pause_reading(self)
    cpdef resume_reading(self)
    cpdef close(self)
    cpdef _end_message(self)
    cdef _new_parser(self)
    # llhttp's events (llhttp_response.pyx calls them in C; httptools by name)
    cpdef on_message_begin(self)
    cpdef on_status(self, bytes reason)
    @cython.locals(n=Py_ssize_t)
    cpdef on_header(self, bytes name, bytes value)
    cpdef on_headers_complete(self)
    cpdef on_body(self, bytes body)
    cpdef on_message_complete(self)


@cython.locals(limit=double, age=double, idle=list, conn=UpstreamConnection)
cpdef UpstreamConnection take_idle(Backend backend, double now, double idle_timeout, object tls=*)
