# Strata developer and CI entry points. On a fresh clone, any target below (but clean)
# first creates .venv and installs the project with its dev extra (demo: runtime deps only).
#
#   make test         lint, make sure PostgreSQL + Redis answer, then ONE pytest run over
#                     tests/ and integration/ (what CI runs: .ci/run)
#   make unit         pytest tests            (no servers)
#   make integration  scripts/ensure-services, then pytest integration
#   make model        the model-based coherence test for minutes, not seconds
#                     (STRATA_MODEL_BUDGET seconds per configuration, default 120)
#   make lint         ruff check, ruff format --check, mypy --strict strata, and the
#                     user-side typing: examples/, tests/typing/ (assert_type checks)
#   make fmt          ruff format + import sorting (rewrites files)
#   make demo         examples/quickstart.py on embedded SQLite (installs runtime deps only)
#   make bench        python -m benchmarks (when benchmarks/__main__.py exists)
#   make clean        remove caches and build output (keeps .venv; distclean removes it)
#
# PYTEST_ARGS adds pytest options, e.g. make unit PYTEST_ARGS='-k codec -x'.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNTIME_STAMP := $(VENV)/.installed-runtime
PYTEST_ARGS ?=
# make test runs test files in parallel (pytest-xdist): the suite mostly waits on servers,
# sockets and subprocesses, not on the CPU. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 4

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

.PHONY: demo test unit integration model lint bench fmt clean distclean services

# (Re)install when pyproject.toml changes; creates the venv if it is missing.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing strata[dev] into $(VENV)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

# The demo needs only the runtime dependencies (no dev extra): its own stamp, so a fresh
# clone's `make demo` installs in seconds. A venv that has the dev extra has them too.
$(RUNTIME_STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing strata (runtime dependencies only) into $(VENV)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	@touch $@

demo: $(RUNTIME_STAMP)
	env -u STRATA_DATABASE_URL -u STRATA_REDIS_URL $(BIN)/python examples/quickstart.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict strata
	$(BIN)/mypy --strict examples tests/typing tests/test_injected_tiers.py

unit: $(STAMP)
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

services: $(STAMP)
	scripts/ensure-services

integration: $(STAMP)
	scripts/ensure-services
	$(BIN)/python -m pytest integration $(PYTEST_ARGS)

model: $(STAMP)
	scripts/ensure-services
	STRATA_MODEL_ALL=1 STRATA_MODEL_BUDGET=$${STRATA_MODEL_BUDGET:-120} $(BIN)/python -m pytest \
		integration/test_model_based.py -k test_every_read $(PYTEST_ARGS)

# One pytest invocation, so the run ends in a single summary line. Its exit status is
# make's: 5 (no tests collected) fails like any other non-zero status.
test: $(STAMP) lint
	scripts/ensure-services
	$(BIN)/python -m pytest tests integration -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP)
	@if [ -f benchmarks/__main__.py ]; then \
		echo "$(BIN)/python -m benchmarks"; $(BIN)/python -m benchmarks; \
	else \
		echo "benchmarks: not yet"; \
	fi

fmt: $(STAMP)
	$(BIN)/ruff check --select I --fix .
	$(BIN)/ruff format .

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
