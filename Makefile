# `make serve` and `make test` do all set-up on a fresh machine: venv, dependencies, model.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install serve test lint typecheck unit e2e bench clean

# llama-cpp-python compiles llama.cpp from source. Its multimodal library (mtmd: a fifth of
# the compile) serves image input only, which Herd does not take; CMAKE_ARGS of your own
# (e.g. -DGGML_CUDA=on) replace this.
CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
export CMAKE_ARGS

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the first time llama-cpp-python compiles llama.cpp (see README); pip caches the wheel
	$(PY) -m pip install -e '.[worker,dev]'
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(VENV)/bin/herd serve

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

unit: install
	$(PY) -m pytest -m "not e2e"

e2e: install
	$(PY) -m pytest -m e2e

test: lint typecheck
	$(PY) -m pytest

bench: install
	$(PY) -m pip install --quiet -e '.[worker,bench]'
	$(PY) -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
