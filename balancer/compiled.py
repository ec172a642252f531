"""Which data plane runs: the Cython-compiled hot modules, or the same modules as Python.

setup.py compiles the modules in COMPILED_MODULES (the one list of them) in place (typed by the .pxd files beside
them), which halves the Python time of every request (docs/decisions.md).
A compiled module that is older than its source is stale: it would run code that is no longer
in the repository. Then, and when BALANCER_PURE_PYTHON is set or a module was not compiled,
every one of them is loaded from source instead. It is all or none: the compiled modules
reference each other's compiled classes.

Imported by `balancer/__init__.py`, before any of these modules can be imported.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Mapping
from types import ModuleType

COMPILED_MODULES = (
    "balancer.metrics",
    "balancer.access_log",
    "balancer.routing",
    "balancer.pool",
    "balancer.balance",
    "balancer.retries",
    "balancer.runtime",
    "balancer.http.headers",
    "balancer.http.timers",
    "balancer.http.parser",
    # C only (.pyx): llhttp's events as C calls. The pure build uses httptools instead.
    "balancer.http.llhttp_parser",
    "balancer.http.llhttp_request",
    "balancer.http.llhttp_response",
    "balancer.http.downstream",
    "balancer.http.upstream",
    "balancer.http.exchange",
    "balancer.http.client_side",
    "balancer.http.http2",
    "balancer.geo",
    "balancer.plugins",
    "balancer.sticky",
    # The built-in plugins' per-request hooks (the top-level `plugins` package).
    "plugins.headers",
    "plugins.ip_filter",
    "plugins.rate_limit",
    "plugins.request_id",
)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _source_of(module: str, package_dir: str = _PACKAGE_DIR) -> str:
    # From the folder that holds `balancer`: the built-in `plugins` package sits beside it.
    path = os.path.join(os.path.dirname(package_dir), *module.split("."))
    if os.path.isdir(path):
        return os.path.join(path, "__init__.py")
    # A module written for C alone (llhttp_parser) is a .pyx, with no pure twin to load.
    return path + ".pyx" if os.path.exists(path + ".pyx") else path + ".py"


# The modules that also run as Python (all but the C-only .pyx).
TWIN_MODULES = tuple(m for m in COMPILED_MODULES if not _source_of(m).endswith(".pyx"))


def _compiled_of(source: str) -> str | None:
    base = os.path.splitext(source)[0]
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if os.path.exists(base + suffix):
            return base + suffix
    return None


def why_not_compiled(modules: tuple[str, ...] = COMPILED_MODULES,
                     environ: Mapping[str, str] = os.environ,
                     package_dir: str = _PACKAGE_DIR) -> str | None:
    """None when every module has a compiled build newer than its .py and .pxd; else why not."""
    if environ.get("BALANCER_PURE_PYTHON"):
        return "BALANCER_PURE_PYTHON is set"
    for module in modules:
        source = _source_of(module, package_dir)
        compiled = _compiled_of(source)
        if compiled is None:
            return f"{module} is not compiled (run `make` or `pip install -e .`)"
        built = os.path.getmtime(compiled)
        for typed in (source, os.path.splitext(source)[0] + ".pxd"):
            if os.path.exists(typed) and os.path.getmtime(typed) > built:
                name = os.path.relpath(typed, os.path.dirname(package_dir))
                return f"{name} changed since it was compiled (run `make`)"
    return None


class _SourceFinder:
    """Finds the COMPILED_MODULES as their .py files, ahead of the extension modules (a meta
    path finder by its `find_spec`; not derived from importlib.abc, whose import costs more
    than all of `balancer/__init__.py` and comes before `balancer run` notes a stop)."""

    def find_spec(self, fullname: str, path: object, target: ModuleType | None = None):
        if fullname not in COMPILED_MODULES:
            return None
        source = _source_of(fullname)
        if source.endswith(".pyx"):
            return None  # nothing imports it in the pure build (parser.py and upstream.py ask)
        if source.endswith("__init__.py"):  # a package: its submodules are found beside it
            return importlib.util.spec_from_file_location(
                fullname, source, submodule_search_locations=[os.path.dirname(source)])
        return importlib.util.spec_from_file_location(fullname, source)


REASON = why_not_compiled()
COMPILED = REASON is None
if not COMPILED:
    sys.meta_path.insert(0, _SourceFinder())


def fields(module: str, cls: str) -> tuple[str, ...]:
    """The `__slots__` of `cls`, a class of the compiled module `module` (its `__name__`): the
    attributes its .pxd declares, the one list of a hot class's fields. The compiled build
    takes its fields from the .pxd itself (a compiled class ignores `__slots__`: () there), so
    only the pure build reads the file, once per module."""
    if COMPILED:
        return ()
    pxd = os.path.splitext(_source_of(module))[0] + ".pxd"
    classes = _DECLARED.get(pxd)
    if classes is None:
        with open(pxd, encoding="utf-8") as file:
            classes = _DECLARED[pxd] = declared_fields(file.read())
    return classes[cls]


_DECLARED: dict[str, dict[str, tuple[str, ...]]] = {}


def declared_fields(pxd: str) -> dict[str, tuple[str, ...]]:
    """The text of a .pxd -> each `cdef class` in it -> its attribute names, in order (methods,
    which have parentheses, left out; a subclass lists only its own)."""
    classes: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in pxd.splitlines():
        if line.startswith("cdef class "):
            name = line[len("cdef class "):].split("(")[0].split(":")[0].strip()
            current = classes.setdefault(name, [])
            continue
        if line and not line[0].isspace():
            current = None  # the class's block ended
        code = line.split("#")[0].strip()
        if current is None or "(" in code or not code.startswith("cdef "):
            continue
        # "cdef public unsigned long a, b" -> a, b: the first name ends the type's words
        first, *rest = code[len("cdef "):].split(",")
        current.append(first.split()[-1])
        current.extend(name.strip() for name in rest)
    return {name: tuple(names) for name, names in classes.items()}


def describe() -> str:
    """For the start-up log."""
    return "compiled (Cython)" if COMPILED else f"pure Python: {REASON}"
