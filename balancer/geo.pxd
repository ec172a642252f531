# Types for the compiled build of geo.py (see balancer/compiled.py): every request of a
# configuration with `geo` asks it for the country and region.

cdef class Geo:
    cdef public bytes header_name
    cdef public object default_region
    cdef tuple _trusted
    cdef object _reader
    cdef tuple _reader_errors
    cdef dict _country_region
    cdef frozenset _pinned, _blocked
    cdef dict _orders, _pinned_orders, _trusted_cache, _db_cache, _header_codes

    cpdef bint is_trusted(self, peer_ip)
