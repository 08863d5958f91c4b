# MVStylizer: `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv lock demo test test-fast lint bench soak-ci mutate clean

# Installs exactly what requirements.lock pins (every distribution of .[dev], torch's CPU wheel included), then
# the project itself without resolving anything: an upstream release changes nothing until `make lock`.
$(STAMP): pyproject.toml requirements.lock
	@echo "Installing the $$(grep -c '^[a-zA-Z]' requirements.lock) pinned packages of requirements.lock into $(VENV) (first run: ~2 min)..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)
	@echo "Installed; $(VENV) is ready."

# Refresh the lock after changing a dependency in pyproject.toml or constraints.txt (hand pins with reasons):
# existing pins stay; `make lock LOCK_FLAGS=--upgrade` moves every pin to the newest allowed release.
lock: $(STAMP)
	$(VENV)/bin/pip-compile $(LOCK_FLAGS) --quiet --extra dev --strip-extras --allow-unsafe --no-emit-index-url \
		--no-emit-find-links --constraint constraints.txt --output-file requirements.lock pyproject.toml

venv: $(STAMP)

# The paper's DNN live: work size 192, int8 network, colour maps rendered on the phone (bench.live, README).
DEMO_FLAGS ?= --model dnn --work-size 192 --precision int8 --render affine --threads 2

demo: $(STAMP)
	$(VENV)/bin/mvs demo $(DEMO_FLAGS)

test: $(STAMP)
	$(PY) -m pytest

# The tests not marked slow (pyproject's markers): about a minute on 2 busy cores, for the edit-test loop. CI runs `make test`.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Every bench that runs on a CPU machine, each writing bench/results/<name>.{json,md,png}: over an hour on the 2-core
# VM (chaos ~4 min, regions ~3 min, interpolation ~11 min, federated ~33 min with the settings of the README's
# figures). Not here: bench.gpu needs CUDA (run `python -m bench.gpu` on a GPU machine; its `--device cpu --quick`
# run is tests/test_bench_gpu.py); bench.soak is a run of its own length (`make soak-ci` below; 30 minutes for the
# README's figures).
CPU_BENCHES := live cpu_path int8 interpolation stylize regions lite chaos scaling
FEDERATED_FLAGS ?= --model edge_worker/model/weights/mvstylizer-small.pt --fresh-learned --scaled-server-lr \
	--syncs 20 --sync-every 16
bench: $(STAMP)
	set -e; for name in $(CPU_BENCHES); do $(PY) -m bench.$$name; done
	$(PY) -m bench.federated $(FEDERATED_FLAGS)

# A 3-minute soak of the local deployment (bench.soak; CI's own step after `make test`): exits 1 if a process's
# RSS, fds, tasks, sessions or JetStream storage grows without bound. Results in out/soak-ci (not committed).
soak-ci: $(STAMP)
	$(PY) -m bench.soak --minutes 3 --out out/soak-ci

# Mutation testing of the pure cores (slow: minutes per module; not in CI). One module: make mutate MODULE=mobile_sim.warp
MUTATE_MODULES := mobile_sim.warp mobile_sim.flow mobile_sim.keyframes streaming.gateway.frame_ids \
	streaming.coefficients streaming.protocol aggregator.strategies aggregator.validation
mutate: $(STAMP)
	$(VENV)/bin/mutmut run $(foreach m,$(or $(MODULE),$(MUTATE_MODULES)),"$(m).*")
	$(PY) -m deploy.mutation_report --survivors

clean:
	rm -rf $(VENV) out mutants .pytest_cache .ruff_cache .mypy_cache
