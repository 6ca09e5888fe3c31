# Two commands do everything on a fresh machine (see README.md):
#   make run   set up what is missing, then start the dashboard on the bundled demo
#   make test  set up what is missing, then run the whole test suite on every core (what .ci/run runs)
PY := .venv/bin/python
PORT ?= 8501
# Test workers: one per core (nproc honours CPU affinity), each with one intra-op thread, so N
# workers keep N cores busy without oversubscription (tests/conftest.py says how tests are grouped).
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: setup run test bench
setup:
	@bash scripts/setup.sh

run: setup
	$(PY) -m streamlit run app.py --server.port $(PORT) --server.headless true

test:
	@bash scripts/setup.sh --with-browser
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(JOBS) --dist loadfile --no-loadscope-reorder

bench: setup
	$(PY) bench/bench_influence.py
	$(PY) bench/bench_demo_paths.py
	$(PY) bench/bench_app_responsiveness.py
