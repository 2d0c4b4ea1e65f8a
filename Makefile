# The two commands of the README: `make demo` runs the main job, `make test` runs the tests.
# Both set up what they need first (Debian packages when missing, the virtualenv .venv).
VENV ?= .venv
PY := $(VENV)/bin/python
export TVM_NUM_THREADS ?= $(shell nproc)

.PHONY: setup demo test test-fast bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/hwq demo --json hwq-out/demo.json

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/speedup.py
	$(PY) benchmarks/demo_e2e.py

clean:
	rm -rf hwq-out .pytest_cache
