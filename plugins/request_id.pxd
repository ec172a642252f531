# The compiled build of request_id.py (see balancer/compiled.py): its hooks run on every request
# of a route that lists it. The plugin class stays a Python subclass of
# `balancer.plugins.Plugin`; its response hook calls the typed function below, which sets the
# header on the view's fields by C calls.

cimport cython

from balancer.plugins cimport PluginRequest, PluginResponse


@cython.locals(request_id=str)
cpdef answer_with_id(tuple prepared_name, PluginRequest request, PluginResponse response)
