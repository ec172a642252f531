# The compiled build of rate_limit.py (see balancer/compiled.py): its hooks run on every request
# of a route that lists it. Nothing is typed here: the plugin is a subclass of the Python class
# `balancer.plugins.Plugin`, and compiling its methods already saves the interpreter's frames.
