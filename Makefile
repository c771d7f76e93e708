# flock — see README.md. `make demo` and `make test` work on a fresh Debian 12 machine as root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := iproute2 procps containernetworking-plugins golang-go golang-github-appc-cni-dev \
                bird2 frr iputils-ping
PYTEST_ARGS ?=

.PHONY: all deps venv schemas build lint test unit demo bench conformance clean

all: test

deps:
	.ci/install-deps $(DEB_PACKAGES)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test,build]'
	touch $@

# Regenerate netconf/compiled_schemas.py after changing a record class (netconf/config.py,
# results.py, state.py) or the pydantic pins.
schemas: venv
	$(PY) -m netconf.compile_schemas

build: venv
	$(PY) build/build_plugin.py

# Lint and types (settings in pyproject.toml: [tool.ruff], [tool.mypy]); no root needed.
# mypy checks the product packages strictly and the fakes' protocol conformance.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Unit tier only: no root, no namespaces.
unit: venv
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

test: lint deps venv build
	FLOCK_REQUIRE_FROZEN=1 $(VENV)/bin/pytest tests $(PYTEST_ARGS)

demo: deps venv
	$(PY) -m lab.demo

bench: deps venv build
	.ci/install-deps valgrind
	$(PY) benchmarks/plugin_startup.py --instructions
	$(PY) benchmarks/reconciler_bench.py
	$(PY) benchmarks/state_read_bench.py

# PyInstaller's output (build/dist, build/work), setuptools' (.setuptools-build, the
# egg-info; build/lib and build/bdist.* from a setuptools too old to read
# [tool.distutils.build]), the venv and the tools' caches.
clean:
	rm -rf build/dist build/work .setuptools-build build/lib build/bdist.* *.egg-info \
	       $(VENV) .pytest_cache .mypy_cache .ruff_cache
