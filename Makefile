# Quickstart:  make repro   (set up .venv from requirements.lock if needed, then `dvc repro`)
#              make test    (same environment, then the whole test suite)
# The environment is rebuilt only when requirements.lock or pyproject.toml change.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV_VERSION := 0.13.9

# Stage commands (`seqmnist download`, ...) run from the environment's bin/.
export PATH := $(abspath $(BIN)):$(PATH)
# Telemetry off for the tools make starts directly (dvc, prefect); seqmnist's own processes get
# the same list from src/seqmnist/environment.py.
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export DVC_STUDIO_OFFLINE := 1
export ORT_DISABLE_TELEMETRY := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

# A subset run in about a minute: for trying things and for CI.
QUICK_SET := -S train.max_train_samples=5000 -S train.epochs=3 -S train.batch_size=64

.PHONY: env repro test quick lint bench bench-quick demo fleet fuzz faults clean-env

env: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	# Bytecode compiled once here: where PYTHONDONTWRITEBYTECODE is set (this project's
	# machines), every process would otherwise compile ~1,600 modules, 3-5 s per `seqmnist` or
	# `dvc` start (bench/README.md: pipeline overhead).
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	@touch $@

repro: $(STAMP)
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest --ignore=tests/faults $(PYTEST_ARGS)

quick: $(STAMP)
	$(BIN)/dvc exp run $(QUICK_SET)

# The web demo (web/, built with npm when needed) with models/onnx/model.onnx, on 127.0.0.1.
demo: $(STAMP)
	$(BIN)/seqmnist demo

# A local fleet for sweeps (PostgreSQL + Prefect server, loopback S3, N workers) in .fleet/;
# needs Debian's postgresql package. Ctrl-C stops it. `make fleet WORKERS=4` for more workers.
WORKERS ?= 2
fleet: $(STAMP)
	$(BIN)/seqmnist fleet up --workers $(WORKERS)

# The fuzz tests (tests/fuzz/) at 20x the inputs `make test` tries (Hypothesis profile "long",
# about 10 minutes here); atheris on the IDX parser too where it is installed
# (`.venv/bin/uv pip install atheris`; it is not in requirements.lock).
fuzz: $(STAMP)
	SEQMNIST_FUZZ_PROFILE=long $(BIN)/python -m pytest tests/fuzz $(PYTEST_ARGS)

# Fault injection (~23 min on 2 cores): kill -9 at FAULT_SEEDS random moments in every stage and
# every publication step, disk full, bad params.yaml, two runs at once, DVC remote and Prefect
# server down. Prints one table (tests/faults/conftest.py), also written as JSON.
FAULT_SEEDS ?= 3
faults: $(STAMP)
	SEQMNIST_FAULT_SEEDS=$(FAULT_SEEDS) SEQMNIST_FAULTS_REPORT=$(abspath bench/.cache/faults.json) \
		$(BIN)/python -m pytest tests/faults -m faults -q -p no:randomly

lint: $(STAMP)
	$(BIN)/ruff check src flows tests bench
	$(BIN)/ruff format --check src flows tests bench

# Full benchmark (~10 min, run it on a quiet machine): installs the bench extra (torch, a CPU
# wheel) with pip if missing, then rewrites bench/results.json and the table in bench/README.md.
bench: $(STAMP)
	@$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python bench/run.py

# Seconds-scale smoke run of every section into bench/.cache/quick/ (torch parts skip if absent).
bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick

clean-env:
	rm -rf $(VENV)
