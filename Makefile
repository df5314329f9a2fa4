# Two commands on a fresh machine:
#   make demo   - sets up .venv and runs `realtime demo`
#   make test   - sets up .venv (with training and test extras) and runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# onnxruntime and onnxruntime-gpu share one package folder: choose with ORT=cpu|gpu.
ORT ?= cpu

.PHONY: demo test setup setup-test lint bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.runtime-$(ORT): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[$(ORT)]'
	touch $@

$(VENV)/.test-$(ORT): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[$(ORT),train,dev]'
	touch $@ $(VENV)/.runtime-$(ORT)

setup: $(VENV)/.runtime-$(ORT)
setup-test: $(VENV)/.test-$(ORT)

demo: setup
	$(VENV)/bin/realtime demo

test: setup-test
	$(PY) -m pytest -q

lint: setup-test
	$(VENV)/bin/ruff check realtime export benchmarks tests
	$(VENV)/bin/ruff format --check realtime export benchmarks tests

bench: setup
	$(PY) benchmarks/run_all.py
