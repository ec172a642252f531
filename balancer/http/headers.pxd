# Types for the compiled build of headers.py (see balancer/compiled.py).

cimport cython

cdef dict _WITH_TOKENS, _LOWER_NAMES
cdef Py_ssize_t _LOWER_NAMES_MAX, _LOWER_NAME_MAX_LEN, _NAMES_BY_POSITION
cdef dict _VARIANT_DIGIT
cdef str _random_hex
cdef Py_ssize_t _random_at

cpdef bytes lower_name(bytes name)


cdef class HeaderNames:
    cdef list _sent, _lower
    cdef Py_ssize_t _at

    cpdef restart(self)
    @cython.locals(at=Py_ssize_t, sent=list, lname=bytes)
    cpdef bytes lower(self, bytes name)

cpdef str request_id_from(value)
@cython.locals(at=Py_ssize_t, h=str)
cpdef str new_request_id()
cpdef frozenset hop_by_hop_with(bytes connection, frozenset base=*)
cpdef bytes forwarded_for(existing, str peer_ip, bint peer_trusted)
