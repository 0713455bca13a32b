# Two commands on a fresh machine: `make run` (the pipeline) and `make test` (the test suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run test test-fast test-all flow lint install install-test clean-outputs servers deploy ui-check run-cifar10 run-shapes64 run-shapes128

# `make run` installs what the pipeline needs; `make test` (and the servers, lint) add the test extras on top.
# infra/install_venv.py installs the pinned set with uv (unpacks and byte-compiles in parallel: a fresh venv in 48 s
# on the 2-core machine, against 136 s with pip on the same machine), falling back to pip when uv cannot be had;
# LATENTFLOW_INSTALLER=pip forces pip.
INSTALL := $(PYTHON) infra/install_venv.py --venv $(VENV) --constraints constraints.txt

$(STAMP): pyproject.toml constraints.txt infra/install_venv.py
	$(INSTALL)
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(INSTALL) --extras test
	touch $(TEST_STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)

run: $(STAMP)  ## the default pipeline: ingest -> ... -> register (dvc repro)
	$(BIN)/dvc repro

run-cifar10: $(STAMP)  ## the CIFAR-10 preset (RGB) as the DVC experiment `cifar10` (dvc exp run -S ... from presets/cifar10)
	$(BIN)/latentflow exp-preset cifar10

run-shapes64: $(STAMP)  ## the shapes64 preset (64x64 RGB shapes generated offline, f=8 autoencoder: 8x8x16 latents) as the DVC experiment `shapes64`
	$(BIN)/latentflow exp-preset shapes64

run-shapes128: $(STAMP)  ## the shapes128 preset (128x128 RGB shapes, f=8 autoencoder, 16x16 latents) as the DVC experiment `shapes128`
	$(BIN)/latentflow exp-preset shapes128

flow: $(STAMP)  ## the same pipeline as a Prefect flow (local ephemeral mode)
	$(BIN)/latentflow flow

test: $(TEST_STAMP)  ## every test (what CI runs): unit tests, then the end-to-end dvc repro, real servers, serving from a fresh venv
	$(BIN)/python -m pytest -q --durations=25

test-fast: $(TEST_STAMP)  ## the unit tests only (tests not marked slow), one pytest-xdist worker per core with one torch thread each: about 2 minutes
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow" -q -n auto

test-all: test  ## same as `make test`

servers: $(TEST_STAMP)  ## local S3 (moto) + MLflow (proxied S3 artifacts) + Prefect servers on 127.0.0.1, as in the tests; Ctrl-C stops them
	$(BIN)/python -m infra.local_servers $(SERVERS_DIR)

deploy: $(STAMP)  ## create the process pool and the deployments of prefect.yaml on $$PREFECT_API_URL (team setup: README)
	$(BIN)/prefect work-pool inspect cpu >/dev/null 2>&1 || $(BIN)/prefect work-pool create cpu --type process
	$(BIN)/prefect --no-prompt deploy --name retrain-cpu --name train-cpu

ui-check: $(STAMP)  ## screenshot of the MLflow model page -> reports/mlflow_ui_champion.png (MLFLOW_TRACKING_URI=http://...)
	$(BIN)/python -m components.registry.browser --tracking-uri "$${MLFLOW_TRACKING_URI:?set MLFLOW_TRACKING_URI}" --model latentflow

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
