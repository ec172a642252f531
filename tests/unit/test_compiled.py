"""Which data plane runs: compiled when built and fresh, the Python source otherwise."""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

from balancer import compiled

MODULES = ("balancer.http.alpha", "balancer.http.beta")
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A package tree with two compiled modules, built after their sources."""
    http = tmp_path / "balancer" / "http"
    http.mkdir(parents=True)
    for name in ("alpha", "beta"):
        for ext in (".py", ".pxd"):
            (http / (name + ext)).write_text("")
            os.utime(http / (name + ext), (1000, 1000))
        (http / (name + SUFFIX)).write_bytes(b"")
        os.utime(http / (name + SUFFIX), (2000, 2000))
    return tmp_path / "balancer"


def why(package: Path, environ: dict[str, str] | None = None) -> str | None:
    return compiled.why_not_compiled(MODULES, environ or {}, str(package))


def test_fresh_builds_are_used(package: Path) -> None:
    assert why(package) is None


def test_a_source_edited_after_the_build_makes_it_stale(package: Path) -> None:
    os.utime(package / "http" / "beta.py", (3000, 3000))
    assert why(package) == "balancer/http/beta.py changed since it was compiled (run `make`)"


def test_a_pxd_edited_after_the_build_makes_it_stale(package: Path) -> None:
    os.utime(package / "http" / "alpha.pxd", (3000, 3000))
    assert "balancer/http/alpha.pxd changed" in why(package)


def test_one_module_missing_means_none_is_used(package: Path) -> None:
    (package / "http" / ("alpha" + SUFFIX)).unlink()
    assert why(package) == "balancer.http.alpha is not compiled (run `make` or `pip install -e .`)"


def test_the_environment_can_ask_for_pure_python(package: Path) -> None:
    assert why(package, {"BALANCER_PURE_PYTHON": "1"}) == "BALANCER_PURE_PYTHON is set"


def test_every_module_with_types_is_one_the_loader_knows() -> None:
    """setup.py compiles each module that has a .pxd; compiled.py must guard the same ones,
    or a stale build of a module it does not know would run."""
    root = Path(compiled.__file__).parent.parent
    typed = {".".join(pxd.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
             for package in ("balancer", "plugins") for pxd in (root / package).rglob("*.pxd")}
    assert typed == set(compiled.COMPILED_MODULES)


def _imported_from(env: dict[str, str]) -> list[str]:
    code = ("import balancer.compiled as c, balancer.http.exchange as e, balancer.http.parser as p;"
            "print(c.COMPILED, e.__file__, p.__file__)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    return out.split()


def test_pure_python_is_loaded_from_the_sources_when_asked() -> None:
    env = {**os.environ, "BALANCER_PURE_PYTHON": "1"}
    flag, exchange, parser = _imported_from(env)
    assert flag == "False"
    assert exchange.endswith("exchange.py") and parser.endswith("parser.py")


@pytest.mark.skipif(bool(os.environ.get("BALANCER_PURE_PYTHON")), reason="pure Python asked for")
def test_the_installed_data_plane_is_compiled() -> None:
    """`make` builds it; were the build to fail silently, every benchmark would be slower."""
    env = {k: v for k, v in os.environ.items() if k != "BALANCER_PURE_PYTHON"}
    flag, exchange, parser = _imported_from(env)
    assert flag == "True", compiled.describe()
    assert exchange.endswith(SUFFIX) and parser.endswith(SUFFIX)


@pytest.mark.parametrize("module", compiled.COMPILED_MODULES)
def test_each_module_can_be_the_first_imported(module: str) -> None:
    """The compiled modules import each other's types in cycles (llhttp's driver, the parser, the
    backend connection, the exchange, the retry rules): whichever a program imports first, a
    module must not read a name from one still being imported. The pure build imports the
    same modules (but for the C-only ones), and must start from any of them too."""
    if compiled.REASON is not None and module not in compiled.TWIN_MODULES:
        pytest.skip("C only: the pure build does not import it")
    env = dict(os.environ)
    run = subprocess.run([sys.executable, "-c", f"import {module}"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
