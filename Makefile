# Two commands do all set-up: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# Use the machine's shared copy of the official datasets when there is one (tests and benchmarks do);
# otherwise cnnlab resolves data itself: --data-dir, $$CNNLAB_DATA, ~/.cache/cnnlab, download.
SHARED_DATA := $(abspath ../shared/datasets)
ifeq ($(origin CNNLAB_DATA), undefined)
ifneq ($(wildcard $(SHARED_DATA)),)
export CNNLAB_DATA := $(SHARED_DATA)
endif
endif

.PHONY: demo test lint bench install clean mutate

install: $(STAMP)

# torch first and pinned: 2.13.0 resolves to the local CPU wheel; anything else pulls CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,dashboard]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cnnlab demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

# Mutation testing of the numerical core with mutmut (about 20-40 minutes on 2 cores; not part of `make test`).
# The modules and the tests that judge them are in pyproject.toml [tool.mutmut]; docs/testing.md keeps the scores.
mutate: $(STAMP)
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2 || true
	$(BIN)/python scripts/mutation_report.py --survivors

bench: $(STAMP)
	$(BIN)/python benchmarks/train_speed.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
