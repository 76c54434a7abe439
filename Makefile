# Two entry points: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench audit-dp mutation mutation-sample lock clean \
	test-packaging test-py313

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "cleanroom needs Python 3.11 or newer (found $(PYTHON))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=24'
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# `make demo` runs the offers scenario; `make demo SCENARIO=list` lists the others.
SCENARIO ?= offers
demo: $(STAMP)
	$(BIN)/python examples/scenarios.py $(SCENARIO)

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/dataset_write.py
	$(BIN)/python benchmarks/envelope_throughput.py
	$(BIN)/python benchmarks/ledger.py
	$(BIN)/python benchmarks/service.py
	$(BIN)/python benchmarks/tpch_jobs.py
	$(BIN)/python benchmarks/privacy.py

# The empirical DP audit (tests/test_dp_audit.py) with more releases than the test suite's
# 2,000 per side: tighter lower bounds on the epsilon each statistic spends, printed as a table.
DP_AUDIT_RELEASES ?= 20000
audit-dp: $(STAMP)
	CLEANROOM_DP_AUDIT_RELEASES=$(DP_AUDIT_RELEASES) $(BIN)/pytest tests/test_dp_audit.py \
		-q -s --no-cov -p no:cacheprovider

# Mutation testing of the security core (tests/mutation, docs/testing.md): every mutant of
# each module in tests/mutation/config.toml against its tests; prints the score and run
# time per module and fails when a module kills under 95% of its non-equivalent mutants.
mutation: $(STAMP)
	$(BIN)/python -m tests.mutation.runner

# A seeded sample of the same (about MUTATION_SAMPLE mutants, a few minutes on two cores),
# so that CI notices a falling score; tests/test_mutation_sample.py runs it too.
MUTATION_SAMPLE ?= 40
MUTATION_SEED ?= 20261126
mutation-sample: $(STAMP)
	$(BIN)/python -m tests.mutation.runner --sample $(MUTATION_SAMPLE) --seed $(MUTATION_SEED)

# The wheel (py.typed, LICENSE, URLs, extras) and a fresh venv with the core install only
# (the wheel + constraints.txt): the SDK, sealing and the CLI without the server, OpenDP or
# psycopg, then the server extras (tests/test_packaging.py; 31 s here with a warm pip cache).
test-packaging: $(STAMP)
	CLEANROOM_PACKAGING_TEST=1 $(BIN)/pytest tests/test_packaging.py -q --no-cov -p no:cacheprovider

# The pinned dependencies on Python 3.13 (every one has a 3.13 wheel) and a subset of the
# tests there (about 3 minutes with the install): crypto, datasets, ledger, the policy check
# with DP, the service's routes, the SDK's import graph, packaging and the CLI (less its
# 50-second end-to-end run). Its venv lives under build/ (ignored by git; `make clean`).
# Python 3.13 warns about SQLite connections left to the garbage collector, which some test
# fixtures do (tests/rooms.py: make_ledger); 3.11 and 3.12 do not, so that warning alone is
# ignored here until the fixtures close their stores.
# the first python3.13 that runs (a pyenv shim may exist without the version selected)
PYTHON313 ?= $(shell for p in python3.13 $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13); do \
	$$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null && command -v $$p && break; done)
VENV313 := build/venv-py313
STAMP313 := $(VENV313)/.installed
PY313_TESTS ?= tests/test_canonical.py tests/test_merkle.py tests/test_hpke.py \
	tests/test_identities.py tests/test_datasets.py tests/test_ledger.py tests/test_policy.py \
	tests/test_privacy_rules.py tests/test_route_authorization.py tests/test_import_graph.py \
	tests/test_packaging.py tests/test_cli.py --deselect \
	tests/test_cli.py::test_three_parties_through_the_cli_against_a_real_service

$(STAMP313): pyproject.toml constraints.txt
	@test -n "$(PYTHON313)" || { echo "test-py313 needs python3.13 (set PYTHON313=...)"; exit 1; }
	rm -rf $(VENV313) && $(PYTHON313) -m venv $(VENV313)
	$(VENV313)/bin/python -m pip install --quiet --upgrade 'pip>=24'
	$(VENV313)/bin/python -m pip install --quiet --only-binary=:all: -c constraints.txt -e '.[dev]'
	touch $(STAMP313)

test-py313: $(STAMP313)
	$(VENV313)/bin/pytest -q --no-cov -p no:cacheprovider \
		-W 'ignore:unclosed database:ResourceWarning' $(PY313_TESTS)

# Refresh the constraints file after changing dependency ranges in pyproject.toml.
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/python -m pip install --quiet --upgrade 'pip>=24'
	.lockvenv/bin/python -m pip install --quiet -e '.[dev]'
	.lockvenv/bin/python -m pip freeze --exclude-editable | grep -v '^-e ' > constraints.txt
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage build dist
