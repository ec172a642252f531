# Types for the compiled build of sticky.py (see balancer/compiled.py): every request of a pool
# with `sticky` reads the player's cookie (or issues one) through these.

cdef class StickyCookies:
    cdef public str name
    cdef public long ttl
    cdef public bint fail_closed
    cdef bytes _secret, _pool_prefix, _mac_key, _mac_prefix
    cdef bytes _header_prefix, _header_suffix, _header_suffix_secure
    cdef dict _tokens, _verified, _issued, _headers
