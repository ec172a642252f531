# Types for the compiled build of headers.py (see balancer/compiled.py).

cdef dict _WITH_TOKENS

cpdef str request_id_from(value)
cpdef str new_request_id()
cpdef frozenset hop_by_hop_with(bytes connection, frozenset base=*)
cpdef bytes forwarded_for(existing, str peer_ip, bint peer_trusted)
