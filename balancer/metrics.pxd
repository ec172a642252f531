# Types for the compiled build of metrics.py (see balancer/compiled.py).

cimport cython

cdef dict _CODE_CLASS
cdef tuple _BUCKETS
cdef Py_ssize_t _BUCKET_COUNT


cdef class Stats:
    cdef public dict requests, durations, rejected, connections, reloads
    cdef public dict connection_limit_reached

    @cython.locals(bucket=Py_ssize_t, hist=list)
    cpdef request(self, str route, str pool, str backend, bytes method, int code, double seconds)
