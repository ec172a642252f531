# Types for the compiled build of metrics.py (see balancer/compiled.py).

cdef dict _CODE_CLASS


cdef class Stats:
    cdef public dict requests, durations, rejected, connections, reloads
    cdef public dict connection_limit_reached

    cpdef request(self, str route, str pool, str backend, bytes method, int code, double seconds)
