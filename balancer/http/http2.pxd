# Types for the compiled build of http2.py (see balancer/compiled.py). A stream is a Downstream:
# its exchange calls its answer methods through the method table, as a ClientConnection's.

cimport cython

from .downstream cimport Downstream
from .exchange cimport Exchange
from .parser cimport RequestHead, host_of
from ..runtime cimport Runtime, RuntimeRef


cdef class Http2Connection


cdef class Http2Stream(Downstream):
    cdef public Http2Connection conn
    cdef public Py_ssize_t stream_id
    cdef public Exchange exchange, tunnel
    cdef public bint closed, head_sent, head_only, ended, end_pending, upstream_paused
    cdef public bint reading_paused, handed
    cdef public bytearray pending
    cdef public Py_ssize_t unacked
    cdef public double blocked_since, body_since
    cdef public Py_ssize_t body_base, body_received

    @cython.locals(fields=list)
    cpdef Py_ssize_t send_interim(self, int status, bytes reason, list headers)
    @cython.locals(fields=list, conn=Http2Connection, tunnel=bint, end=bint, size=Py_ssize_t,
                   status_value=bytes, lname=bytes, value=bytes)
    cpdef Py_ssize_t send_head(self, int status, bytes reason, list headers, frozenset drop,
                               list extra, bint framed, bint close)
    cpdef Py_ssize_t send_body(self, bytes data)
    cpdef Py_ssize_t end_response(self)
    cpdef begin_batch(self)
    cpdef flush(self)
    cpdef exchange_finished(self, Exchange exchange)
    cpdef start_tunnel(self, Exchange exchange)
    cpdef pause_request_body(self)
    cpdef resume_request_body(self)
    cpdef close(self)
    cpdef abort(self)
    @cython.locals(exchange=Exchange)
    cpdef lost(self)


cdef class Http2Connection:
    cdef public object server, listener, loop, transport, tls_version, client_cert, limits
    cdef public RuntimeRef runtime_ref
    cdef public object receive_data, events, send_response, send_data, data_to_send
    cdef public object stream_window, queued_body_size
    cdef public str client_ip
    cdef public bint peer_trusted, write_paused, closed, draining, _flush_soon
    cdef public bytes scheme
    cdef public object h2
    cdef public Py_ssize_t window, last_stream_id, flood, resets, finished_streams
    cdef public dict streams
    cdef public set blocked, accounted
    cdef public object _timer, _body_timer

    @cython.locals(kind=object)
    cpdef _dispatch(self, list events)
    cpdef _glitch(self)
    @cython.locals(stream_id=Py_ssize_t, stream=Http2Stream, exchange=Exchange, ended=bint,
                   head=RequestHead, runtime=Runtime)
    cpdef _request(self, event)
    @cython.locals(stream=Http2Stream)
    cpdef _request_ended(self, Py_ssize_t stream_id)
    @cython.locals(stream_id=Py_ssize_t, size=Py_ssize_t, stream=Http2Stream, exchange=Exchange)
    cpdef _data(self, event)
    @cython.locals(stream=Http2Stream)
    cpdef _stream_closed(self, Py_ssize_t stream_id, int code)
    @cython.locals(stream=Http2Stream, exchange=Exchange)
    cpdef _reset_by_player(self, Py_ssize_t stream_id, int code)
    cpdef _acknowledge(self, Py_ssize_t stream_id, Py_ssize_t size)
    cpdef _release(self, Http2Stream stream)
    cpdef reopen_window(self, Http2Stream stream, Py_ssize_t size)
    @cython.locals(stream_id=Py_ssize_t, pending=bytearray, window=Py_ssize_t, last=bint)
    cpdef push(self, Http2Stream stream)
    @cython.locals(stream=Http2Stream)
    cpdef _window_opened(self, Py_ssize_t stream_id)
    cpdef stream_done(self, Http2Stream stream)
    cpdef reset(self, Http2Stream stream, int code)
    cpdef flush_soon(self)
    cpdef flush(self)
    cpdef _close_when_done(self)
    cpdef _cancel_timer_if_idle(self)


cpdef _pause_upstream(Http2Stream stream)
cpdef _resume_upstream(Http2Stream stream)
cdef dict _STATUS_VALUES, _NEVER_SENT, _NEVER_SENT_TUNNEL
cpdef frozenset _never_sent(frozenset drop, bint tunnel)
cpdef bytes _status_value(int status)
@cython.locals(size=Py_ssize_t)
cpdef Py_ssize_t _fields_size(list fields)
# name and value typed: name[0], len() and the comparisons are C operations, not calls.
@cython.locals(head=RequestHead, size=Py_ssize_t, headers=list, cookies=list, name=bytes,
               value=bytes, method=bytes, path=bytes, authority=bytes, protocol=bytes,
               host_field=bytes, query=Py_ssize_t)
cpdef RequestHead request_head(fields, limits, bint ended)
