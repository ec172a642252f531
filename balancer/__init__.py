"""Casino edge load balancer."""

from . import compiled as _compiled  # noqa: F401  (before any data-plane module is imported)


def version() -> str:
    """The installed package's version ("unknown" when run from a tree never installed)."""
    from importlib import metadata  # here, not above: `balancer run` notes a stop before it

    try:
        return metadata.version("casino-edge-balancer")
    except metadata.PackageNotFoundError:
        return "unknown"
