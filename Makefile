# Two commands do all the set-up (README): `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REGISTRY_ADDR ?= 127.0.0.1:5000
BASE_REF ?= $(REGISTRY_ADDR)/bases/python:3.11-bookworm
export COMPOSER_BASE_REF := $(BASE_REF)

.PHONY: help venv infra base demo test unit integration bench stop clean

help:
	@echo "make demo   install, start registry + BuildKit, compose an environment end to end"
	@echo "make test   the whole test suite (unit + integration against the real engine and registry)"
	@echo "make infra  only install and start the Docker engine and the local registry"
	@echo "make stop   stop what make infra started"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

infra:
	scripts/infra.sh start

base: infra
	scripts/make-base.sh $(BASE_REF)

demo: venv base
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" scripts/demo.sh

test: venv base
	$(PY) -m pytest -q -ra --durations=15

unit: venv
	$(PY) -m pytest -q tests/unit

integration: venv base
	$(PY) -m pytest -q -ra tests/integration

# Side-by-side timings (naive docker build, composer BuildKit, cache hit, daemonless, floor);
# BENCH_ARGS e.g. "--runs 5 --sizes small". Writes bench-results.json.
bench: venv base
	$(PY) scripts/bench.py $(BENCH_ARGS)

stop:
	scripts/infra.sh stop

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
