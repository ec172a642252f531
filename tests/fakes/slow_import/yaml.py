"""Stands in for PyYAML while the balancer loads its modules, to hold a process there.

With this directory first on PYTHONPATH, `import yaml` (the balancer's config reader imports
it) says "importing yaml" on stderr, then waits until the test opens the named pipe named in
BALANCER_TEST_IMPORT_GATE and closes it, and then loads the real PyYAML in its place.
"""

import importlib
import os
import sys

sys.stderr.write("importing yaml\n")
sys.stderr.flush()
with open(os.environ["BALANCER_TEST_IMPORT_GATE"], "rb") as gate:
    gate.read()

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
del sys.modules["yaml"]
sys.modules["yaml"] = importlib.import_module("yaml")  # what `import yaml` hands out
