cimport cython
# Types for the compiled build of runtime.py (see balancer/compiled.py).

from .balance cimport _Weighted
from .metrics cimport Stats
from .pool cimport Backend, Pool
from .routing cimport RouteTable


@cython.final  # never subclassed: cpdef calls skip the look for a Python override
cdef class Facts:
    cdef public object head, country, region
    cdef public str client_ip
    cdef public bint https
    cdef public double now

    cpdef Facts for_request(self, object head, object country, object region, double now)


@cython.final  # never subclassed: cpdef calls skip the look for a Python override
cdef class Choice:
    cdef public Backend backend
    cdef public object pool  # PoolRuntime
    cdef public str reason
    cdef public object retry_after, set_cookie, split_cookie
    cdef public bint no_backend
    cdef public str sticky


@cython.final  # never subclassed: cpdef calls skip the look for a Python override
cdef class PoolRuntime:
    cdef public str name
    cdef public Pool pool
    cdef public object config, geo, sticky, retry_statuses
    cdef public object tls  # tls.BackendTls or None
    cdef public _Weighted strategy  # LeastConn, RoundRobin, Random or PeakEwma
    cdef public bint latency_aware  # strategy is PeakEwma: report response latencies to it
    # The pool's timeouts, read on every request and body chunk.
    cdef public double connect_timeout, response_timeout, idle_timeout, websocket_idle_timeout
    cdef dict _tokens
    cdef object _tokens_members, _hash_key

    cpdef Choice choose(self, Facts facts)
    cpdef Backend _balance(self, candidates, Facts facts, double now)
    cdef tuple _region_order(self, Facts facts, bint pinned)
    cdef bytes _new_cookie(self, Backend backend, Facts facts)


cdef class RuntimeRef:
    cdef public Runtime current


@cython.final  # never subclassed: cpdef calls skip the look for a Python override
cdef class Runtime:
    cdef public object config, geo, limits, _trusted
    cdef public RouteTable routes
    cdef public dict pools, _trusted_cache
    cdef public Stats stats
    cdef public object access_log

    cpdef bint is_trusted(self, str ip)
