# mpimem: the two newcomer commands are `make demo` and `make test`.
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: install demo test test-openmpi bench bench-scaling figures clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[mpich,test,figures]'
	# compile every kernel for this CPU into the install's cache (<venv>/var/cache/mpimem, README "Compiled code")
	$(PY) -m mpimem.cli.warm || echo "make: mpimem.cli.warm did not complete; kernels are compiled when first used"
	touch $(STAMP)

demo: install
	$(PY) -m mpimem.cli.demo

test: install
	bash tests/run-tests.sh

test-openmpi:   # the mpi_core tests under Open MPI, in .venv-openmpi (also the end of `make test`)
	PYTHON=$(PYTHON) bash tests/run-openmpi.sh

bench: install
	$(PY) -m bench.run_all $(BENCH_ARGS)

bench-scaling: install
	$(PY) -m bench.bench_scaling

figures: install   # into build/figures; `make figures FIGURES_OUT=docs/figures` replaces the committed ones
	FIGURES_OUT='$(FIGURES_OUT)' bash analysis/make-figures.sh

clean:
	rm -rf $(VENV) .venv-openmpi demo-out results build *.egg-info
