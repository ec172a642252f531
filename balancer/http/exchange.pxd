# Types for the compiled build of exchange.py (see balancer/compiled.py).

cimport cython

from ..plugins cimport PluginRequest, PluginResponse, request_view, response_view
from ..pool cimport Backend
from ..routing cimport Route
from ..retries cimport may_retry, safe_to_repeat
from ..runtime cimport Choice, Facts, PoolRuntime, Runtime
from .downstream cimport Downstream
from .headers cimport field_lines, forwarded_for, hop_by_hop_with, join_bytes, request_id_from
from .parser cimport RequestHead
from .timers cimport idle_sweep
from .upstream cimport UpstreamConnection


cdef dict _PLUGIN_REJECT_REASON
cdef dict _FAILURE_OUTCOME, _PLUGIN_OUTCOME, _NO_BACKEND_OUTCOME
cdef frozenset _KEPT_FOR_LOG
cdef unsigned long long _NOT_FORWARDED_LENGTHS  # read per request
# balancer/phases.py's phases and move table, as C values.
cdef int ROUTING, FORWARDING, RESPONDING, TUNNEL, DONE
cdef long MOVES


@cython.final  # never subclassed: cpdef calls skip the look for a Python override
cdef class Exchange:
    cdef public Downstream client
    cdef public RequestHead head
    cdef public Runtime runtime
    cdef public Facts facts
    cdef public Route route
    cdef public PoolRuntime pool
    cdef public Backend backend
    cdef public UpstreamConnection upstream
    cdef public str request_id
    cdef public double started
    cdef public list tried, body
    cdef public Py_ssize_t body_size
    cdef public bint replayable, request_done
    cdef public int phase, status
    cdef public bint close_client, tunnel
    cdef public bytes upstream_head, early_tunnel
    cdef public object set_cookie, split_cookie, region, country
    cdef bint _connecting, _head_only, _safe
    cdef double _sent_at
    cdef tuple _response_hooks
    # What the access log tells beyond the above (balancer/access_log.py).
    cdef public Py_ssize_t bytes_in, bytes_out
    cdef public str sticky
    cdef public double connect_time, sent_at, head_at
    cdef public bint idle_active
    cdef public double idle_since

    @cython.locals(old=int)
    cpdef _move(self, int phase)
    cpdef begin(self)
    @cython.locals(hooks=tuple)
    cpdef _run_request_hooks(self, object plugins, Py_ssize_t index, PluginRequest request)
    @cython.locals(pool=PoolRuntime, choice=Choice, facts=Facts)
    cpdef _choose(self)
    @cython.locals(drop=frozenset, lines=list)
    cpdef bytes _build_upstream_head(self)
    cpdef _attempt(self, Backend backend)
    cpdef _open_connection(self, Backend backend)
    cpdef int _may_retry(self, str failure)
    cpdef Backend _retry_target(self)
    cpdef _attach(self, UpstreamConnection conn, double now)
    cpdef request_body(self, bytes data)
    cpdef request_ended(self)
    # What the backend connection calls: C calls, not Python method calls.
    cpdef response_interim(self, int status, bytes reason, list headers)
    @cython.locals(extra=list, pool=PoolRuntime, now=double)
    cpdef response_head(self, UpstreamConnection conn, int status, bytes reason, list headers,
                        bint chunked, bint has_length, bint bodiless, object connection)
    @cython.locals(fields=list, response=PluginResponse, request=PluginRequest)
    cpdef list _run_response_hooks(self, UpstreamConnection conn, int status, list headers)
    cpdef response_body(self, bytes data)
    cpdef response_end(self, UpstreamConnection conn, bint reusable)
    cpdef upstream_failed(self, UpstreamConnection conn, str kind)
    cpdef tunnel_from_backend(self, bytes data)
    cpdef tunnel_closed(self)
    cpdef double idle_limit(self)
    cpdef idle_expired(self)
    cpdef _release_backend(self)
    cpdef _finish(self, str outcome)
    cpdef _ended(self, str outcome)
    cpdef _count(self)
