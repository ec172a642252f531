"""Compiles the data plane's hot modules with Cython when it can.

The modules on the request path stay plain Python, typed for the compiler by the `.pxd` files
beside them. Where Cython or a C compiler is missing, or the build fails, the package
installs and runs as pure Python: slower, same behaviour. `balancer/compiled.py` decides at
import time which of the two runs; docs/decisions.md has the measurements.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext



def compiled_modules() -> list[str]:
    """The source files of balancer/compiled.py's COMPILED_MODULES, the one list of them (read,
    not imported: importing the package needs its dependencies). Each has a .pxd beside it
    with its types (tests/unit/test_compiled.py checks that every .pxd is listed)."""
    tree = ast.parse(Path("balancer/compiled.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["COMPILED_MODULES"]:
            paths = [Path(*name.split(".")) for name in ast.literal_eval(node.value)]
            return [str(p / "__init__.py" if p.is_dir() else
                        p.with_suffix(".pyx") if p.with_suffix(".pyx").exists() else p.with_suffix(".py"))
                    for p in paths]
    raise RuntimeError("balancer/compiled.py has no COMPILED_MODULES")


COMPILED_MODULES = compiled_modules()
# llhttp's C sources, compiled into the one module that drives it (vendor/llhttp/README.md).
LLHTTP = Path("vendor/llhttp")


def extension_of(source: str) -> Extension:
    """A module's extension. Each sees llhttp's header (a module that types a parser embeds its
    C state); llhttp's driver is linked with llhttp's sources."""
    name = os.path.splitext(source)[0].replace("/", ".")
    sources = [source]
    if name == "balancer.http.llhttp_parser":
        sources += [str(LLHTTP / "src" / c) for c in ("api.c", "http.c", "llhttp.c")]
    return Extension(name, sources, include_dirs=[str(LLHTTP / "include")])


CYTHON_OPTIONS = dict(
    compiler_directives={
        "language_level": 3,
        # Annotations document; only the .pxd files type. Cython would otherwise turn
        # `data: bytes` into a run-time check that the pure modules do not make.
        "annotation_typing": False,
    },
    quiet=True,
)


class OptionalBuildExt(build_ext):
    """A failed compile is a warning, never a failed install: the pure modules still work."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers...
            print(f"warning: data plane not compiled ({exc}); it runs as pure Python", file=sys.stderr)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"warning: {ext.name} not compiled ({exc}); the data plane runs as pure Python",
                  file=sys.stderr)


def extensions() -> list:
    if os.environ.get("BALANCER_PURE_PYTHON"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("warning: Cython is not installed; the data plane runs as pure Python", file=sys.stderr)
        return []
    try:
        return cythonize([extension_of(source) for source in COMPILED_MODULES], **CYTHON_OPTIONS)
    except Exception as exc:  # a Cython error: the modules still run as Python
        print(f"warning: data plane not compiled ({exc}); it runs as pure Python", file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
