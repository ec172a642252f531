"""Casino edge load balancer."""

from . import compiled as _compiled  # noqa: F401  (before any data-plane module is imported)
