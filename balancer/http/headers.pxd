# Types for the compiled build of headers.py (see balancer/compiled.py).

cimport cython

cdef dict _WITH_TOKENS, _LOWER_NAMES
cdef Py_ssize_t _LOWER_NAMES_MAX, _LOWER_NAME_MAX_LEN, _NAMES_BY_POSITION
cdef Py_ssize_t _IDS_PER_BATCH, _ID_LEN
cdef str _random_ids
cdef Py_ssize_t _random_at

cpdef bytes lower_name(bytes name)


@cython.final  # never subclassed: cpdef calls skip the look for a Python override
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
cpdef unsigned long long length_bits(frozenset names) except? 0

# head_bytes.py's join_bytes, in C, for the modules that cimport it: a head's pieces, all
# bytes, joined with one size pass and one copy each. b"".join asks every piece for its buffer
# (a call and a release each): about 100 instructions a piece, 2.5k for an upstream request head.
# A piece that is not bytes takes b"".join's way.
cdef extern from *:
    """
    static inline PyObject *balancer_join_bytes(PyObject *pieces) {
        Py_ssize_t count = PyList_GET_SIZE(pieces), size = 0, i;
        PyObject *joined, *empty, *piece;
        char *at;
        for (i = 0; i < count; i++) {
            piece = PyList_GET_ITEM(pieces, i);
            if (!PyBytes_CheckExact(piece)) {
                empty = PyBytes_FromStringAndSize(NULL, 0);
                if (empty == NULL) return NULL;
                joined = PyObject_CallMethod(empty, "join", "O", pieces);
                Py_DECREF(empty);
                return joined;
            }
            if (PyBytes_GET_SIZE(piece) > PY_SSIZE_T_MAX - size) {
                PyErr_SetString(PyExc_OverflowError, "join() result is too long");
                return NULL;
            }
            size += PyBytes_GET_SIZE(piece);
        }
        joined = PyBytes_FromStringAndSize(NULL, size);
        if (joined == NULL) return NULL;
        at = PyBytes_AS_STRING(joined);
        for (i = 0; i < count; i++) {
            piece = PyList_GET_ITEM(pieces, i);
            memcpy(at, PyBytes_AS_STRING(piece), (size_t)PyBytes_GET_SIZE(piece));
            at += PyBytes_GET_SIZE(piece);
        }
        return joined;
    }
    """
    bytes join_bytes "balancer_join_bytes"(list pieces)
