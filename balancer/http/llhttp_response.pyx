# cython: language_level=3
"""A backend's responses through llhttp, for the compiled build's UpstreamConnection (the
events as C calls; see llhttp_parser.pyx)."""

from .llhttp_parser cimport HTTP_RESPONSE, LlhttpParser
from .upstream cimport UpstreamConnection


cdef class ResponseParser(LlhttpParser):
    """A backend's responses, for an UpstreamConnection."""

    def __cinit__(self, UpstreamConnection connection not None):
        self._start(HTTP_RESPONSE)
        self._connection = connection

    cpdef int get_status_code(self):
        return self._ll.status_code

    cdef int _message_begin(self) except -1:
        (<UpstreamConnection>self._connection).on_message_begin()
        return 0

    cdef int _text(self, bytes text) except -1:
        (<UpstreamConnection>self._connection).on_status(text)
        return 0

    cdef int _header(self, bytes name, bytes value) except -1:
        (<UpstreamConnection>self._connection).on_header(name, value)
        return 0

    cdef int _headers_complete(self) except -1:
        (<UpstreamConnection>self._connection).on_headers_complete()
        return 0

    cdef int _body(self, bytes data) except -1:
        (<UpstreamConnection>self._connection).on_body(data)
        return 0

    cdef int _message_complete(self) except -1:
        (<UpstreamConnection>self._connection).on_message_complete()
        return 0
