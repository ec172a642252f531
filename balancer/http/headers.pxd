# Types for the compiled build of headers.py (see balancer/compiled.py).

cimport cython

cdef dict _WITH_TOKENS, _LOWER_NAMES
cdef Py_ssize_t _LOWER_NAMES_MAX, _LOWER_NAME_MAX_LEN, _NAMES_BY_POSITION
cdef Py_ssize_t _IDS_PER_BATCH, _ID_LEN
cdef str _random_ids
cdef Py_ssize_t _random_at

cpdef bytes lower_name(bytes name)


cdef class HeaderNames:
    cdef list _sent, _lower
    cdef Py_ssize_t _at

    cpdef restart(self)
    @cython.locals(at=Py_ssize_t, sent=list, lname=bytes)
    cpdef bytes lower(self, bytes name)

cpdef str request_id_from(value)
# Untyped: Cython would want a typed bytearray's slice assignment to be given a bytearray
@cython.locals(n=Py_ssize_t, digits=object, ids=object)
cdef str _new_batch()
@cython.locals(at=Py_ssize_t)
cpdef str new_request_id()
cpdef frozenset hop_by_hop_with(bytes connection, frozenset base=*)
cpdef bytes forwarded_for(existing, str peer_ip, bint peer_trusted)
