"""Casino edge load balancer."""

from importlib import metadata

from . import compiled as _compiled  # noqa: F401  (before any data-plane module is imported)


def version() -> str:
    """The installed package's version ("unknown" when run from a tree never installed)."""
    try:
        return metadata.version("casino-edge-balancer")
    except metadata.PackageNotFoundError:
        return "unknown"
