cimport cython
# Types for the compiled build of timers.py (see balancer/compiled.py); the .py stays the
# source of truth for behaviour. Every attribute another module reads is `public`.

@cython.final  # never subclassed: cpdef calls skip the look for a Python override
cdef class Deadline:
    cdef object _loop, _time
    cdef object _callback
    cdef public double when
    cdef object _handle
    cdef double _armed_at

    cpdef set_in(self, double seconds)
    cpdef set_at(self, double when)
    cpdef clear(self)
    cpdef cancel(self)
    cdef _arm(self, double when)


cdef double SWEEP_INTERVAL, SWEEP_INTERVAL_MIN


cdef class IdleSweep:
    cdef object _loop, _handle
    cdef dict _groups
    cdef double _interval

    cpdef add(self, object tunnel, double limit, set group)


cdef object _sweep_loop
cdef IdleSweep _loop_sweep

cpdef IdleSweep idle_sweep(object loop)
