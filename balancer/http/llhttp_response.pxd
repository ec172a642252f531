# Types for llhttp_response.pyx (see llhttp_parser.pyx).

from .llhttp_parser cimport LlhttpParser


cdef class ResponseParser(LlhttpParser):
    cdef object _connection  # an UpstreamConnection (a typed field would add a cimport to every user)

    cpdef int get_status_code(self)
