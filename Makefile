# Two commands on a fresh machine: `make run` (the pipeline) and `make test` (the test suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run test test-all flow lint install clean-outputs

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## the default pipeline: ingest -> ... -> register (dvc repro)
	$(BIN)/dvc repro

flow: $(STAMP)  ## the same pipeline as a Prefect flow (local ephemeral mode)
	$(BIN)/latentflow flow

test: $(STAMP)  ## the default test suite (includes a tiny end-to-end dvc repro)
	$(BIN)/python -m pytest -m "not slow" -q

test-all: $(STAMP)  ## every test, slow ones included
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
