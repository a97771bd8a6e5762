# Two commands: `make demo` and `make test`. Both create (or reuse) .venv and install the
# project with everything it needs, so a fresh clone needs nothing installed by hand.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo_out
PYTEST_ARGS ?=

.PHONY: demo test test-fast venv bench clean

venv: $(STAMP)

$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m launch.demo --out $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest tests -n 2 --durations=10 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest tests -n 2 -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/tad_bench.py
	$(PY) benchmarks/data_bench.py
	$(PY) benchmarks/model_bench.py
	$(PY) benchmarks/sampler_bench.py
	$(PY) benchmarks/train_bench.py
	$(PY) benchmarks/attention_bench.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
