# cython: language_level=3
"""A player's requests through llhttp, for the compiled build's RequestReader (the events as C
calls; see llhttp_parser.pyx)."""

from libc.string cimport memcmp

from .llhttp_parser cimport HTTP_REQUEST, LlhttpParser
from .parser cimport RequestReader

from .errors import RequestError

# llhttp's method names by number, from its own table (its `method` is a byte; a number it
# does not name reads b"", and llhttp never reports one).
cdef extern from *:
    """
    static const char *balancer_method_names[256];
    static void balancer_name_methods(void) {
    #define BALANCER_METHOD(NUM, NAME, STRING) balancer_method_names[NUM] = #STRING;
      HTTP_ALL_METHOD_MAP(BALANCER_METHOD)
    #undef BALANCER_METHOD
    }
    """
    const char* balancer_method_names[256]
    void balancer_name_methods()

balancer_name_methods()
cdef tuple _METHOD_NAMES = tuple(
    <bytes>balancer_method_names[number] if balancer_method_names[number] != NULL else b""
    for number in range(256))


cdef class RequestParser(LlhttpParser):
    """A player's requests, for a RequestReader."""

    def __cinit__(self, RequestReader reader not None):
        self._start(HTTP_REQUEST)
        self._reader = reader

    cpdef bytes get_method(self):
        # One shared object per method: its hash is computed once, not per request.
        return _METHOD_NAMES[self._ll.method]

    cdef int _message_begin(self) except -1:
        self._protocol_read = 0
        (<RequestReader>self._reader).on_message_begin()
        return 0

    cdef int _protocol(self, const char* at, size_t length) except -1:
        # Only HTTP is spoken here; llhttp also reads RTSP/ and ICE/ request lines. A prefix of
        # "HTTP" is enough: llhttp itself refuses any name but those three whole.
        cdef const char* expected = b"HTTP"
        if self._protocol_read + length > 4 or memcmp(at, expected + self._protocol_read, length) != 0:
            raise RequestError(400, "unsupported protocol")
        self._protocol_read += length
        return 0

    cdef int _text(self, bytes text) except -1:
        (<RequestReader>self._reader).on_url(text)
        return 0

    cdef int _header(self, bytes name, bytes value) except -1:
        (<RequestReader>self._reader).on_header(name, value)
        return 0

    cdef int _headers_complete(self) except -1:
        (<RequestReader>self._reader).on_headers_complete()
        return 0

    cdef int _chunk_header(self) except -1:
        (<RequestReader>self._reader).on_chunk_header()
        return 0

    cdef int _body(self, bytes data) except -1:
        (<RequestReader>self._reader).on_body(data)
        return 0

    cdef int _message_complete(self) except -1:
        (<RequestReader>self._reader).on_message_complete()
        return 0
