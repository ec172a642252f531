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

# head_bytes.py's field_lines, in C: an answer's header fields as its head's lines, those in
# `drop` left out (a name is looked up in the set only when `lengths`, headers.length_bits,
# has its length: most names are told apart by length alone; 0: every name looked up). Built as lists of four pieces a
# field (name, ": ", value, CRLF) and joined, they cost about 450 instructions a field.
# A field is a tuple of three bytes (lower-case name, name, value), as the readers make them.
cdef extern from *:
    """
    static int balancer_dropped(PyObject *lname, PyObject *drop, unsigned long long lengths,
                                int keep_upgrade) {
        Py_ssize_t n = PyBytes_GET_SIZE(lname);
        int found;
        if (lengths != 0 && n < 64 && !((lengths >> n) & 1))
            return 0;
        found = PySet_Contains(drop, lname);
        if (found <= 0)
            return found;
        if (keep_upgrade && n == 7 && memcmp(PyBytes_AS_STRING(lname), "upgrade", 7) == 0)
            return 0;
        return 1;
    }

    static PyObject *balancer_field_lines(PyObject *fields, PyObject *drop,
                                          unsigned long long lengths, int keep_upgrade) {
        Py_ssize_t count = PyList_GET_SIZE(fields), size = 0, i;
        PyObject *field, *name, *value, *lines;
        char *at;
        int dropped;
        for (i = 0; i < count; i++) {
            field = PyList_GET_ITEM(fields, i);
            if (!PyTuple_CheckExact(field) || PyTuple_GET_SIZE(field) != 3
                    || !PyBytes_CheckExact(PyTuple_GET_ITEM(field, 0))
                    || !PyBytes_CheckExact(PyTuple_GET_ITEM(field, 1))
                    || !PyBytes_CheckExact(PyTuple_GET_ITEM(field, 2))) {
                PyErr_SetString(PyExc_TypeError, "a header field is a tuple of three bytes");
                return NULL;
            }
            dropped = balancer_dropped(PyTuple_GET_ITEM(field, 0), drop, lengths, keep_upgrade);
            if (dropped < 0)
                return NULL;
            if (!dropped)
                size += PyBytes_GET_SIZE(PyTuple_GET_ITEM(field, 1))
                        + PyBytes_GET_SIZE(PyTuple_GET_ITEM(field, 2)) + 4;
        }
        lines = PyBytes_FromStringAndSize(NULL, size);
        if (lines == NULL)
            return NULL;
        at = PyBytes_AS_STRING(lines);
        for (i = 0; i < count; i++) {
            field = PyList_GET_ITEM(fields, i);
            /* The same answer as above: nothing ran in between that could change the list. */
            dropped = balancer_dropped(PyTuple_GET_ITEM(field, 0), drop, lengths, keep_upgrade);
            if (dropped < 0) {
                Py_DECREF(lines);
                return NULL;
            }
            if (dropped)
                continue;
            name = PyTuple_GET_ITEM(field, 1);
            value = PyTuple_GET_ITEM(field, 2);
            memcpy(at, PyBytes_AS_STRING(name), (size_t)PyBytes_GET_SIZE(name));
            at += PyBytes_GET_SIZE(name);
            *at++ = ':';
            *at++ = ' ';
            memcpy(at, PyBytes_AS_STRING(value), (size_t)PyBytes_GET_SIZE(value));
            at += PyBytes_GET_SIZE(value);
            *at++ = 13;  /* CR LF */
            *at++ = 10;
        }
        return lines;
    }
    """
    bytes field_lines "balancer_field_lines"(list fields, frozenset drop, unsigned long long lengths,
                                             bint keep_upgrade)

# uuid_text.py's uuid4_texts, in C: 16 random bytes an id, each byte two digits from a table,
# the version and variant bits set, dashes at 8-4-4-4-12. The strided slices of the pure build
# cost about 1,100 instructions an id.
cdef extern from *:
    """
    static PyObject *balancer_uuid4_texts(PyObject *random) {
        static const char hex[] = "0123456789abcdef";
        Py_ssize_t n = PyBytes_GET_SIZE(random) / 16, i;
        const unsigned char *in = (const unsigned char *)PyBytes_AS_STRING(random);
        PyObject *text = PyUnicode_New(n * 36, 127);
        Py_UCS1 *out;
        int j;
        if (text == NULL)
            return NULL;
        out = PyUnicode_1BYTE_DATA(text);
        for (i = 0; i < n; i++, in += 16) {
            for (j = 0; j < 16; j++) {
                unsigned char byte = in[j];
                if (j == 6)
                    byte = (byte & 0x0f) | 0x40;  /* version 4 */
                else if (j == 8)
                    byte = (byte & 0x3f) | 0x80;  /* variant 10 */
                if (j == 4 || j == 6 || j == 8 || j == 10)
                    *out++ = '-';
                *out++ = hex[byte >> 4];
                *out++ = hex[byte & 15];
            }
        }
        return text;
    }
    """
    str uuid4_texts "balancer_uuid4_texts"(bytes random)
