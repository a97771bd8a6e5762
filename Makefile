# Two commands: `make demo` and `make test`. Both create (or reuse) .venv and install the
# project with everything it needs, so a fresh clone needs nothing installed by hand.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo_out
PYTEST_ARGS ?=
# .[all] carries libtpu (TPU compiles for `launch.plan --compile` and CI): keep the demo,
# the ablation and the tests on the CPU instead of probing for a TPU at every start.
# `make demo JAX_PLATFORMS=` lets JAX pick an accelerator.
export JAX_PLATFORMS ?= cpu

.PHONY: demo test test-fast lint format venv bench clean ablation

venv: $(STAMP)

$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m launch.demo --out $(DEMO_DIR)

# The paper's ablation in miniature (launch/ablation.py): `make ablation` runs the full
# variant (under 2 h on 2 CPU cores) into ablation_out/; `make ablation ABLATION=quick`
# (about 12 min) or ABLATION=smoke write ablation_out_<variant>/. Rerunning resumes.
ABLATION ?= full
ABLATION_DIR ?= $(if $(filter full,$(ABLATION)),ablation_out,ablation_out_$(ABLATION))
ablation: $(STAMP)
	$(PY) -m launch.ablation --config=configs/ablation.py:$(ABLATION) --out=$(ABLATION_DIR)

# ruff (ruff.toml): the linter, and the formatter in check mode; `make format` applies both.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

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
