# The compiled build of rate_limit.py (see balancer/compiled.py): its hook runs on every request
# of a route that lists it. The plugin class stays a Python subclass of
# `balancer.plugins.Plugin`; the buckets are C classes, so that taking a token is arithmetic on
# C doubles and C calls, with no float boxed and no attribute looked up by name.

cimport cython

from balancer.plugins cimport PluginRequest


@cython.final
cdef class Bucket:
    cdef public double tokens, last


@cython.final
cdef class TokenBuckets:
    cdef readonly double rate, burst, refill_time
    cdef readonly Py_ssize_t max_keys
    cdef readonly object buckets
    cdef object _get, _move_to_end
    cdef readonly bint by_address
    cdef readonly object key_of
    cdef public object clock

    @cython.locals(now=double, tokens=double, bucket=Bucket, wait=long)
    cpdef take(self, PluginRequest request)
    @cython.locals(full_since=double, bucket=Bucket)
    cpdef _expire(self, double now)


cpdef take_token(TokenBuckets limiter, PluginRequest request)
