# Types for the compiled build of client_side.py (see balancer/compiled.py).

cimport cython

from ..runtime cimport RuntimeRef
from .downstream cimport Downstream
from .exchange cimport Exchange
from .headers cimport field_lines, join_bytes
from .parser cimport RequestHead, RequestReader
from .timers cimport Deadline


cdef dict _STATUS_LINES
cdef unsigned long long _HOP_LENGTHS  # read per answer

cpdef bytes status_line(int status, bytes reason)


cdef class ClientConnection(Downstream):
    cdef public object transport, queue
    cdef public RequestReader reader
    cdef public bint closed
    cdef public Exchange exchange, reading, tunnel
    cdef public Deadline deadline
    cdef int _paused
    cdef bint _idle, _received, _lingering, _chunked_out, _close_after
    cdef list _batch
    cdef object _error
    cdef RuntimeRef _runtime
    cdef double _body_rate, _body_since
    cdef Py_ssize_t _body_base

    cpdef request_started(self, RequestHead head)
    cpdef request_body(self, bytes data)
    cpdef request_ended(self)
    cpdef _begin(self, Exchange exchange)
    @cython.locals(out=list)
    cpdef Py_ssize_t send_interim(self, int status, bytes reason, list headers)
    @cython.locals(out=list, version=bytes, exchange=Exchange)
    cpdef Py_ssize_t send_head(self, int status, bytes reason, list headers, frozenset drop,
                               list extra, bint framed, bint close)
    cpdef Py_ssize_t send_body(self, bytes data)
    cpdef Py_ssize_t end_response(self)
    cpdef Py_ssize_t send_answer(self, int status, list fields, bytes body, bint close,
                                 bint head_only)
    cpdef write(self, bytes data)
    cpdef begin_batch(self)
    cpdef flush(self)
    cpdef exchange_finished(self, Exchange exchange)
    cpdef _pause(self, int reason)
    cpdef _resume(self, int reason)
    cpdef pause_request_body(self)
    cpdef resume_request_body(self)
    cpdef start_tunnel(self, Exchange exchange)
    cpdef close(self)
    cpdef abort(self)
