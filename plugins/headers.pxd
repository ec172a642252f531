# The compiled build of headers.py (see balancer/compiled.py): its hooks run on every request
# of a route that lists it. The plugin class stays a Python subclass of
# `balancer.plugins.Plugin`; its hooks call the typed functions below, which reach the views'
# fields and the prepared edits as C calls.

cimport cython

from balancer.plugins cimport Headers, PluginRequest, PluginResponse


@cython.final
cdef class PreparedEdits:
    cdef readonly tuple remove, set, add

    @cython.locals(field=tuple)
    cpdef apply(self, Headers headers)


cpdef edit_request(PreparedEdits edits, PluginRequest request)
cpdef edit_response(PreparedEdits edits, PluginResponse response)
