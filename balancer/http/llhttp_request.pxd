# Types for llhttp_request.pyx (see llhttp_parser.pyx).

from .llhttp_parser cimport LlhttpParser


cdef class RequestParser(LlhttpParser):
    cdef object _reader  # a RequestReader (a typed field would add a cimport to every user)
    cdef size_t _protocol_read  # bytes of the request line's protocol name checked so far

    cpdef bytes get_method(self)
