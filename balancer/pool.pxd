# Types for the compiled build of pool.py (see balancer/compiled.py).

cimport cython

cdef class Backend:
    cdef public str pool_name, id, host, source
    cdef public object config, address, region, weight
    cdef public int port
    cdef public bint healthy, draining, removed
    cdef public double ejected_until, drain_deadline, ramp_start, latency, latency_at
    cdef public double keepalive_announced, keepalive_seen, reuse_within
    cdef public long ejections, consecutive_failures, ejections_total
    cdef public long active_requests, websockets, open_connections
    cdef public list idle
    cdef public set tunnels
    cdef public dict upstream_errors, health_checks
    cdef public object last_failure


@cython.final  # never subclassed: cpdef calls skip the look for a Python override
cdef class Pool:
    cdef public str name
    cdef public object config
    cdef public dict backends
    cdef public list members
    cdef public long panics_total, retries_total, stale_retries_total
    cdef public tuple _static, _discovered
    cdef public double created

    @cython.locals(b=Backend, usable=long, out=list)
    cpdef list eligible(self, double now, bint allow_panic=*)
    cpdef bint is_usable(self, Backend backend, double now)
