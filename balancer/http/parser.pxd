# Types for the compiled build of parser.py (see balancer/compiled.py).

cimport cython

from .headers cimport HeaderNames
from .llhttp_request cimport RequestParser

# Module tables looked up per request: C globals, so a lookup is a dict call, not a
# method found by name.
cdef dict _METHODS, _HOSTS, _VERSIONS
cdef tuple _FOREIGN_PROTOCOLS
cdef frozenset _SPECIAL_HEADERS, _FRAMING_LOOKALIKES, _LOOKALIKE_LENGTHS
cdef bint _SCAN_FOR_PROTOCOL
cdef unsigned long long _SPECIAL_LENGTHS


@cython.locals(rtsp=bytes, ice=bytes)
cdef bint _names_foreign_protocol(bytes data)
cpdef str host_of(bytes value)


@cython.final  # never subclassed: cpdef calls skip the look for a Python override
cdef class RequestHead:
    cdef public bytes method, target, path, version
    cdef public list headers
    cdef public str host
    cdef public object host_header  # bytes | None
    cdef public bint keep_alive, chunked
    cdef public object content_length  # int | None
    cdef public object upgrade, connection, forwarded_for, request_id, cookie  # bytes | None
    cdef public bint expect_continue, absolute
    cdef public Py_ssize_t size

    cpdef header(self, bytes lname)


@cython.final  # never subclassed: its cpdef methods skip the look for a Python override
cdef class RequestReader:
    cdef object _events
    cdef Py_ssize_t _max_url, _max_header_bytes, _max_header_count, _max_body
    cdef RequestParser _parser
    cdef bytes _last_host_header
    cdef list _head_reads
    cdef str _last_host
    cdef HeaderNames _names
    cdef RequestHead _head
    cdef Py_ssize_t _url_bytes, _head_size, _head_bytes, _body_bytes
    cdef bint _in_head, _keep_alive_asked
    cdef int _hosts
    cdef public bint head_started

    cpdef feed(self, bytes data)
    cpdef _check_target(self, RequestHead head)
    cpdef _feed_checked(self, bytes data)
    cpdef _feed_scanning(self, bytes data)
    cpdef bint _request_line_ends_at(self, bytes buf, Py_ssize_t at)
    # llhttp's events (llhttp_request.pyx calls them in C; httptools by name)
    cpdef on_message_begin(self)
    cpdef on_url(self, bytes url)
    @cython.locals(n=Py_ssize_t)
    cpdef on_header(self, bytes name, bytes value)
    cpdef on_headers_complete(self)
    cpdef on_chunk_header(self)
    cpdef on_body(self, bytes body)
    cpdef on_message_complete(self)
