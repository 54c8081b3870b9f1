# mpimem: the two newcomer commands are `make demo` and `make test`.
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
export NUMBA_CACHE_DIR ?= $(CURDIR)/.venv/numba-cache

.PHONY: install demo test bench bench-scaling figures clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[mpich,test,figures]'
	touch $(STAMP)

demo: install
	$(PY) -m mpimem.demo

test: install
	bash tests/run-tests.sh

bench: install
	$(PY) -m bench.run_all $(BENCH_ARGS)

bench-scaling: install
	$(PY) -m bench.bench_scaling

figures: install   # into build/figures; `make figures FIGURES_OUT=docs/figures` replaces the committed ones
	FIGURES_OUT='$(FIGURES_OUT)' bash analysis/make-figures.sh

clean:
	rm -rf $(VENV) demo-out results build *.egg-info
