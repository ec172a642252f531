# Types for the compiled build of plugins.py (see balancer/compiled.py): the views a plugin
# gets are made for every hook call, so they are C objects; `Plugin` itself stays a Python
# class (plugins subclass it and set hooks to None).

cimport cython


@cython.locals(i=Py_ssize_t, field=tuple)
cdef Py_ssize_t _index_of(list fields, bytes lname, Py_ssize_t start=*)

cdef class Headers:
    cdef list _fields
    cdef frozenset _protected

    cpdef _set(self, tuple field)
    cpdef _remove(self, bytes lname)
    cpdef _check_editable(self, tuple field)
    cpdef _changed(self, bytes lname)


cdef class _RequestHeaders(Headers):
    cdef object _head

    cpdef _changed(self, bytes lname)


cdef class PluginRequest:
    cdef readonly object _exchange
    cdef Headers _headers


cdef class PluginResponse:
    cdef int _status
    cdef readonly Headers headers
