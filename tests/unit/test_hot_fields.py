"""A compiled class's fields are declared once, as `cdef` attributes in the .pxd beside its
module; the pure build's `__slots__` are read from there (`balancer.compiled.fields`,
docs/decisions.md "One source for hot fields")."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from balancer.compiled import TWIN_MODULES, _source_of, declared_fields

PACKAGE = Path(__file__).resolve().parents[2] / "balancer"


def test_the_reader_sees_fields_and_not_methods() -> None:
    classes = declared_fields((PACKAGE / "http" / "exchange.pxd").read_text())
    assert {"client", "phase", "status", "_head_only", "bytes_in", "head_at"} <= set(classes["Exchange"])
    assert not {"begin", "_move", "response_head"} & set(classes["Exchange"])


def test_a_subclass_declares_only_its_own_fields() -> None:
    pxd = """
cdef class Base:
    cdef public object a, b  # two
    cdef bint _c
    cpdef go(self, int n)

cdef class Child(Base):
    @cython.locals(x=int)
    cpdef int run(self)
    cdef public unsigned long d
"""
    assert declared_fields(pxd) == {"Base": ("a", "b", "_c"), "Child": ("d",)}


@pytest.mark.parametrize("module", TWIN_MODULES)
def test_every_slotted_class_takes_its_slots_from_its_own_pxd_entry(module: str) -> None:
    """`__slots__ = fields(__name__, "Name")` naming the class it is in: a copied line naming
    another class would give the pure build that class's fields."""
    source = Path(_source_of(module, str(PACKAGE)))
    declared = declared_fields(source.with_suffix(".pxd").read_text())
    for node in ast.parse(source.read_text()).body:
        if not isinstance(node, ast.ClassDef) or node.name not in declared:
            continue
        for item in node.body:
            if (isinstance(item, ast.Assign) and isinstance(item.targets[0], ast.Name)
                    and item.targets[0].id == "__slots__"):
                assert ast.unparse(item.value) == f"fields(__name__, '{node.name}')", node.name


def test_the_pure_build_has_exactly_the_declared_fields() -> None:
    """Imported as Python (whichever build this run tests): each class's slots are its .pxd's
    fields, and its instances have no __dict__ to hide a misspelt attribute in."""
    script = """
import importlib, json, sys
from balancer import compiled
from balancer.compiled import TWIN_MODULES, _source_of, declared_fields
assert not compiled.COMPILED
found = {}
for module in TWIN_MODULES:
    with open(_source_of(module)[:-3] + ".pxd") as file:
        declared = declared_fields(file.read())
    loaded = importlib.import_module(module)
    for name, fields in declared.items():
        cls = getattr(loaded, name)
        if "__slots__" in vars(cls):
            found[module + "." + name] = [list(fields), list(cls.__slots__), cls.__dictoffset__]
print(json.dumps(found))
"""
    env = {**os.environ, "BALANCER_PURE_PYTHON": "1"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         cwd=PACKAGE.parent, timeout=60)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert "balancer.http.exchange.Exchange" in found
    for name, (declared, slots, dict_offset) in found.items():
        assert slots == declared, name
        assert dict_offset == 0, f"{name} instances have a __dict__"
