# Two entry points: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench audit-dp mutation mutation-sample lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "cleanroom needs Python 3.11 or newer (found $(PYTHON))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=24'
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

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

# Refresh the constraints file after changing dependency ranges in pyproject.toml.
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/python -m pip install --quiet --upgrade 'pip>=24'
	.lockvenv/bin/python -m pip install --quiet -e '.[dev]'
	.lockvenv/bin/python -m pip freeze --exclude-editable | grep -v '^-e ' > constraints.txt
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage build dist
