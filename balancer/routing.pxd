# Types for the compiled build of routing.py (see balancer/compiled.py).

cimport cython

cdef class Route:
    cdef public str name, pool_name
    cdef public object config, plugins, split, mirror
    cdef public object _host, _suffix, _methods  # str | None, str | None, frozenset | None
    cdef public bytes _prefix
    cdef public tuple _headers
    cdef public object _cert

    cpdef bint matches_host(self, str host)
    cpdef bint matches(self, str host, bytes path, bytes method, list headers, object cert=*)


cdef class RouteTable:
    cdef public list routes
    cdef public set _hosts
    cdef public tuple _wildcards

    @cython.locals(route=Route)
    cpdef Route match(self, str host, bytes path, bytes method, list headers, object cert=*)
