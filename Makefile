# Quick start: `make repro` runs the whole pipeline, `make test` runs the test suite.
# Both bootstrap .venv from requirements.lock on first use; only Python 3.11+ and make are assumed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# dvc.yaml's stage commands call `python`: make it the one in .venv.
export PATH := $(abspath $(BIN)):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help venv repro smoke test test-slow lock lint clean-smoke mlflow-ui

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "error: Python 3.11+ is required ($(PYTHON) is $$($(PYTHON) -V 2>&1))" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(STAMP)  ## create .venv from requirements.lock

repro: $(STAMP)  ## run the whole pipeline (dvc repro) with params.yaml
	$(BIN)/dvc repro

smoke: $(STAMP)  ## the pipeline on a few hundred images, 1 epoch, in a scratch copy
	$(BIN)/python -m cifar10_mlops.smoke

test: $(STAMP)  ## the offline test suite (tiny synthetic data)
	$(BIN)/python -m pytest

test-slow: $(STAMP)  ## tests that need the full dataset or minutes of training
	$(BIN)/python -m pytest -m slow

mlflow-ui: $(STAMP)  ## open the MLflow UI on the embedded store at http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root ./mlruns/artifacts --host 127.0.0.1 --port 5000

lock:  ## re-resolve requirements.lock from pyproject.toml (needs uv)
	uv pip compile pyproject.toml --extra cpu --extra dev --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --no-header -o requirements.lock
	uv pip compile pyproject.toml --extra gpu --extra dev --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --no-header -o requirements-gpu.lock
