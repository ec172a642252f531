"""A compiled class's fields are declared twice: `__slots__` in the module (the pure build)
and `cdef` attributes in the .pxd beside it (the compiled build). Cython needs both
(docs/decisions.md, "One source for hot fields"); this keeps them one list, read from the
sources with ast and a line reader, nothing imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "balancer"
_CLASS = re.compile(r"^cdef class (\w+)")
_FIELD = re.compile(r"^\s+cdef (?:public |readonly )?(?!class)[\w.\[\], ]*?\b(\w+(?:\s*,\s*\w+)*)\s*(?:#.*)?$")


def pxd_fields(pxd: Path) -> dict[str, set[str]]:
    """cdef class name -> its attribute names (methods left out)."""
    classes: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in pxd.read_text().splitlines():
        found = _CLASS.match(line)
        if found:
            current = classes.setdefault(found.group(1), set())
            continue
        if line and not line[0].isspace():
            current = None
        code = line.split("#")[0]
        if current is None or "(" in code or not code.strip().startswith("cdef "):
            continue
        # "cdef public unsigned long a, b" -> a, b: the first name ends the type's words
        first, *rest = code.strip()[len("cdef "):].split(",")
        current.add(first.split()[-1])
        current.update(name.strip() for name in rest)
    return classes


def py_slots(source: Path) -> dict[str, set[str]]:
    slots: dict[str, set[str]] = {}
    for node in ast.parse(source.read_text()).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if (isinstance(item, ast.Assign) and len(item.targets) == 1
                    and isinstance(item.targets[0], ast.Name) and item.targets[0].id == "__slots__"):
                slots[node.name] = set(ast.literal_eval(item.value))
    return slots


PXDS = sorted(PACKAGE.rglob("*.pxd"))


@pytest.mark.parametrize("pxd", PXDS, ids=[str(p.relative_to(PACKAGE)) for p in PXDS])
def test_slots_and_pxd_declare_the_same_fields(pxd: Path) -> None:
    source = pxd.with_suffix(".py")
    declared = pxd_fields(pxd)
    slots = py_slots(source)
    for name, fields in declared.items():
        if name not in slots:
            continue  # no __slots__: the pure class keeps a __dict__, nothing to disagree with
        assert slots[name] == fields, (
            f"{name}: only in __slots__: {sorted(slots[name] - fields)}; "
            f"only in {pxd.name}: {sorted(fields - slots[name])}")


def test_the_reader_sees_fields() -> None:
    """The check above must be able to fail: the exchange's fields are found."""
    fields = pxd_fields(PACKAGE / "http" / "exchange.pxd")["Exchange"]
    assert {"client", "phase", "status", "_head_only", "bytes_in", "head_at"} <= fields
