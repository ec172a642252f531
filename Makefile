# Every target does its own set-up from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The data-plane modules setup.py compiles: a change to one rebuilds them
# (balancer/compiled.py would otherwise fall back to pure Python, with a warning).
# Each .pxd types a .py, or (llhttp's driver) a .pyx built with vendor/llhttp's C sources.
PXD := $(shell find balancer plugins -name '*.pxd')
COMPILED := $(PXD) $(wildcard $(PXD:.pxd=.py) $(PXD:.pxd=.pyx)) $(wildcard vendor/llhttp/src/*.c)

.PHONY: run test bench check clean system-packages test-stress

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml setup.py $(COMPILED) | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m balancer demo --config config/demo.yaml

# The Debian programs the tests drive for real (scripts/system-packages says which).
system-packages:
	scripts/system-packages

test: $(STAMP) system-packages
	$(BIN)/python -m pytest
	@# The same modules, uncompiled: what runs where no C compiler is at hand.
	BALANCER_PURE_PYTHON=1 $(BIN)/python -m pytest -p no:cacheprovider

# The suite three runs in a row beside four busy loops: shows it holds on a loaded machine.
test-stress: $(STAMP) system-packages
	scripts/test-stress

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/websockets_idle.py

check: $(STAMP)
	$(BIN)/python -m balancer check --config config/example.yaml

clean:
	rm -rf $(VENV) build *.egg-info
	find balancer -name '*.so' -o -name '*.c' | xargs rm -f
