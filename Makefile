# wsdet — two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.wsdet-installed
export WSDET_MNIST_DIR ?= $(abspath ../shared/data/mnist)
# Material for MkDocs prints a banner about its successor on every build; the build is offline.
export NO_MKDOCS_2_WARNING ?= 1
LINTED := wsdet tests examples benchmarks docs
# Not --quiet: it would drop the warnings that --strict counts.
DOCS := $(VENV)/bin/mkdocs build --strict

.PHONY: all install demo test test-fast lint docs docs-serve bench clean

all: test

# Reinstall only when the packaging files change (the stamp records them).
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,viz,dev,progress,nifti,docs]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py --out demo_out

# pytest runs the tests, the package's doctests (pyproject.toml) and the docs' code blocks.
test: $(STAMP)
	$(PY) -m pytest -q
	$(DOCS)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy wsdet

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy wsdet

# The documentation site, into site/ (git-ignored); --strict: any warning fails the build.
docs: $(STAMP)
	$(DOCS)

docs-serve: $(STAMP)
	$(VENV)/bin/mkdocs serve

bench: $(STAMP)
	$(PY) benchmarks/bench_attention.py
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_augment.py --repeats 11

clean:
	rm -rf $(VENV) demo_out site build dist .pytest_cache .mypy_cache .ruff_cache
