# Quickstart:  make repro   (set up .venv from requirements.lock if needed, then `dvc repro`)
#              make test    (same environment, then the whole test suite)
# The environment is rebuilt only when requirements.lock or pyproject.toml change.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV_VERSION := 0.13.9

export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export DVC_STUDIO_OFFLINE := 1
export ORT_DISABLE_TELEMETRY := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: env repro test quick lint bench clean-env

env: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync --quiet --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	@touch $@

repro: $(STAMP)
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

quick: $(STAMP)
	$(BIN)/dvc exp run -S train.max_train_samples=2000 -S train.epochs=2 -S gate.min_test_accuracy=0

lint: $(STAMP)
	$(BIN)/ruff check src flows tests bench
	$(BIN)/ruff format --check src flows tests bench

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean-env:
	rm -rf $(VENV)
