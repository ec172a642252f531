# Types for the compiled build of client_side.py (see balancer/compiled.py).

from ..runtime cimport RuntimeRef
from .exchange cimport Exchange
from .parser cimport RequestHead, RequestReader
from .timers cimport Deadline


cdef class ClientConnection:
    cdef public object server, listener, loop, transport, queue
    cdef public RequestReader reader
    cdef public str client_ip
    cdef public bint peer_trusted, closed
    cdef public bytes scheme
    cdef public object tls_version
    cdef public object client_cert  # tls.ClientCertificate or None
    cdef public Exchange exchange, reading, tunnel
    cdef public Deadline deadline
    cdef int _paused
    cdef bint _write_paused, _idle, _received, _lingering
    cdef list _batch
    cdef object _error
    cdef RuntimeRef _runtime
    cdef double _body_rate, _body_since
    cdef Py_ssize_t _body_base

    cpdef request_started(self, RequestHead head)
    cpdef request_body(self, bytes data)
    cpdef request_ended(self)
    cpdef write(self, bytes data)
    cpdef begin_batch(self)
    cpdef flush(self)
    cpdef exchange_finished(self, Exchange exchange)
    cpdef _pause(self, int reason)
    cpdef _resume(self, int reason)
    cpdef pause_reading_for_upstream(self)
    cpdef resume_reading_for_upstream(self)
