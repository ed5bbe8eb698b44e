# `make serve` and `make test` do all set-up on a fresh machine: venv, dependencies, model.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install serve test lint typecheck unit e2e bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# llama-cpp-python compiles llama.cpp the first time (~17 min on 2 cores); pip caches the wheel
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
