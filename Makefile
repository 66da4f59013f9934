# wsdet — two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.wsdet-installed
export WSDET_MNIST_DIR ?= $(abspath ../shared/data/mnist)

.PHONY: all install demo test test-fast lint bench clean

all: test

# Reinstall only when the packaging files change (the stamp records them).
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,viz,dev,progress,nifti]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q
	$(VENV)/bin/ruff check wsdet tests examples benchmarks
	$(VENV)/bin/ruff format --check wsdet tests examples benchmarks
	$(VENV)/bin/mypy wsdet

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check wsdet tests examples benchmarks
	$(VENV)/bin/ruff format --check wsdet tests examples benchmarks
	$(VENV)/bin/mypy wsdet

bench: $(STAMP)
	$(PY) benchmarks/bench_attention.py
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .mypy_cache .ruff_cache
