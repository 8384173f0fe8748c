# Two commands on a fresh machine with python3, pip and make:
#   make demo   refine a synthetic movie with ground truth (the main job)
#   make test   run the whole test suite (with a quick mode of the benchmarks)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

# the install compiles the kernels ahead of time (setup.py, about a minute):
# again whenever they change. The build runs in this venv, given the build
# requirements of pyproject.toml ([build-system] requires, and wheel for an
# editable install), not in an isolated environment that pip would fill
# with another copy of them
BUILD_REQUIRES := 'setuptools>=64' wheel numba numpy

$(STAMP): pyproject.toml setup.py kernels/*.py kernels/aot_signatures.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(BUILD_REQUIRES)
	$(PY) -m pip install --quiet --no-build-isolation -e '.[test]'
	touch $(STAMP)

# Picasso, for the peer benchmark only (benchmarks/test_bench_peers.py):
# installed without its declared dependencies, which pin pandas<3 and bring a
# GUI stack; the file lists what the imported modules need instead
PEERS := benchmarks/requirements-peers.txt
PEERS_STAMP := $(VENV)/.peers-installed

$(PEERS_STAMP): $(STAMP) $(PEERS)
	$(PY) -m pip install --quiet --no-deps -r $(PEERS)
	touch $(PEERS_STAMP)

demo: $(STAMP)
	$(VENV)/bin/refinefit demo

# the tests in one process per core (pytest-xdist): a fresh clone spends
# much of its run compiling kernels, which then happens on every core;
# tests that compile the same kernels share an xdist_group (one process)
test: $(PEERS_STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n auto --dist loadgroup

# Full-size benchmarks with timings (W1 against trackpy, I1 against Picasso,
# compile times, large cluster, the command, Dask); the figures in
# docs/performance.md and the README's table are written from this run,
# never typed
bench: $(PEERS_STAMP)
	mkdir -p .benchmarks
	REFINEFIT_BENCH=full $(PY) -m pytest benchmarks -q --benchmark-enable \
		--benchmark-columns=min,median,rounds \
		--benchmark-json=.benchmarks/latest.json
	$(PY) benchmarks/report.py .benchmarks/latest.json

clean:
	rm -rf $(VENV) build *.egg-info demo_output .benchmarks
