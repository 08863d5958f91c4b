# MVStylizer: `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench mutate clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mvs demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench.live
	$(PY) -m bench.interpolation
	$(PY) -m bench.stylize

# Mutation testing of the pure cores (slow: minutes per module; not in CI). One module: make mutate MODULE=mobile_sim.warp
MUTATE_MODULES := mobile_sim.warp mobile_sim.flow mobile_sim.keyframes streaming.gateway.frame_ids \
	streaming.coefficients streaming.protocol aggregator.strategies aggregator.validation
mutate: $(STAMP)
	$(VENV)/bin/mutmut run $(foreach m,$(or $(MODULE),$(MUTATE_MODULES)),"$(m).*")
	$(PY) -m deploy.mutation_report --survivors

clean:
	rm -rf $(VENV) out mutants .pytest_cache .ruff_cache .mypy_cache
