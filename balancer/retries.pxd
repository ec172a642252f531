# Types for the compiled build of retries.py (see balancer/compiled.py).

from .http.parser cimport RequestHead

cdef frozenset IDEMPOTENT_METHODS
cdef dict CONDITION

cpdef bint safe_to_repeat(RequestHead head)
cpdef int may_retry(str failure, bint safe, bint replayable, bint response_started, bint tunnel,
                    Py_ssize_t tried, Py_ssize_t attempts, object retry_on)
