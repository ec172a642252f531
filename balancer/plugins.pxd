# Types for the compiled build of plugins.py (see balancer/compiled.py): the views a plugin
# gets are made for every hook call, so they are C objects; `Plugin` itself stays a Python
# class (plugins subclass it and set hooks to None). The built-in plugins (plugins/*.pxd)
# cimport the views, so that their hooks reach the fields and the prepared edits by C calls.

cimport cython

cdef frozenset _REQUEST_PROTECTED, _RESPONSE_PROTECTED


@cython.locals(i=Py_ssize_t, field=tuple)
cdef Py_ssize_t _index_of(list fields, bytes lname, Py_ssize_t start=*)

cdef class Headers:
    cdef list _fields
    cdef frozenset _protected

    cpdef set_prepared(self, tuple field)
    cpdef add_prepared(self, tuple field)
    cpdef remove_prepared(self, tuple field)
    cpdef _set(self, tuple field)
    cpdef _remove(self, bytes lname)
    cpdef _check_editable(self, tuple field)
    cpdef _changed(self, bytes lname)


cdef class _RequestHeaders(Headers):
    cdef object _head

    cpdef _changed(self, bytes lname)


@cython.final
cdef class PluginRequest:
    cdef readonly object _exchange
    cdef Headers _headers
    cdef readonly str client_ip


@cython.final
cdef class PluginResponse:
    cdef int _status
    cdef readonly Headers headers


@cython.locals(view=PluginRequest)
cpdef PluginRequest request_view(object exchange, str client_ip)

@cython.locals(headers=Headers, view=PluginResponse)
cpdef PluginResponse response_view(int status, list fields)
