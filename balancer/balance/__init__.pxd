# Types for the compiled build of balance/__init__.py (see balancer/compiled.py).

cimport cython

from ..pool cimport Backend


cdef class _Weighted:
    cdef public object weight_of

    cpdef Backend pick(self, candidates, double now)


cdef class LeastConn(_Weighted):
    @cython.locals(b=Backend, best=Backend, score=double, best_score=double, ties=long)
    cpdef Backend pick(self, candidates, double now)


cdef class RoundRobin(_Weighted):
    cdef dict _current

    cpdef Backend pick(self, candidates, double now)


cdef class Random(_Weighted):
    pass


cdef class PeakEwma(_Weighted):
    cdef public double decay

    @cython.locals(count=Py_ssize_t, first=Py_ssize_t, second=Py_ssize_t, a=Backend, b=Backend)
    cpdef Backend pick(self, candidates, double now)
    @cython.locals(latency=double, weight=double)
    cpdef double cost(self, Backend backend, double now)
    cpdef seed(self, candidates, double now)
    @cython.locals(kept=double)
    cpdef observe(self, Backend backend, double seconds, double now)
