# Types for the compiled build of metrics.py (see balancer/compiled.py).

cimport cython

cdef dict _CODE_CLASS
cdef tuple _BUCKETS
cdef Py_ssize_t _BUCKET_COUNT


cdef class RequestLine:
    cdef public long long count
    cdef public list hist, backend_hist


@cython.final  # never subclassed: cpdef calls skip the look for a Python override
cdef class Stats:
    cdef dict _lines
    cdef public dict durations, backend_durations, rejected, connections, reloads
    cdef public dict connection_limit_reached, mirrored
    cdef public object access_log

    @cython.locals(bucket=Py_ssize_t, bound=double, hist=list, line=RequestLine)
    cpdef request(self, str route, str pool, str backend, bytes method, int code, double seconds)
    cpdef add_requests(self, tuple key, long long count)
    cdef RequestLine _line(self, tuple key)
