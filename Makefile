# Two commands do everything on a fresh machine (see README.md):
#   make run   set up what is missing, then start the dashboard on the bundled demo
#   make test  set up what is missing, then run the whole test suite (what .ci/run runs)
PY := .venv/bin/python
PORT ?= 8501

.PHONY: setup run test bench
setup:
	@bash scripts/setup.sh

run: setup
	$(PY) -m streamlit run app.py --server.port $(PORT) --server.headless true

test:
	@bash scripts/setup.sh --with-browser
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/bench_influence.py
	$(PY) bench/bench_demo_paths.py
	$(PY) bench/bench_app_responsiveness.py
