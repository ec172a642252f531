# Types for the compiled build of downstream.py (see balancer/compiled.py). Every method is
# cpdef: an exchange's call to its downstream is a C call through the method table, whichever
# class implements it.

cimport cython

from .exchange cimport Exchange


cdef frozenset _NOTHING_DROPPED


cdef class Downstream:
    cdef public object server, loop, listener, tls_version, client_cert
    cdef public str client_ip
    cdef public bint peer_trusted, write_paused
    cdef public bytes scheme
    cdef public object facts  # runtime.Facts (typed where the exchange reads it)

    cpdef Py_ssize_t send_interim(self, int status, bytes reason, list headers)
    cpdef Py_ssize_t send_head(self, int status, bytes reason, list headers, frozenset drop,
                               list extra, bint framed, bint close)
    cpdef Py_ssize_t send_body(self, bytes data)
    cpdef Py_ssize_t end_response(self)
    @cython.locals(headers=list, sent=Py_ssize_t)
    cpdef Py_ssize_t send_answer(self, int status, list fields, bytes body, bint close,
                                 bint head_only)
    cpdef begin_batch(self)
    cpdef flush(self)
    cpdef pause_request_body(self)
    cpdef resume_request_body(self)
    cpdef start_tunnel(self, Exchange exchange)
    cpdef exchange_finished(self, Exchange exchange)
    cpdef count_rejected(self, str reason)
    cpdef close(self)
    cpdef abort(self)
