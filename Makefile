# The commands a newcomer needs. Each target is idempotent: it creates .venv when missing,
# installs when pyproject.toml changed, then does its job.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Real data: point HAM10000_DIR at a HAM10000-layout folder. Unset: synthetic data.
export HAM10000_DIR ?= $(if $(wildcard ../shared/data/ham10000),$(abspath ../shared/data/ham10000),)
export REAL_LESIONS_DIR ?= $(if $(wildcard ../shared/data/real_lesions),$(abspath ../shared/data/real_lesions),)
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
RUN_CONFIG ?= configs/default.yaml

.PHONY: install run test test-fast lint format bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,serve,dev]'
	# The Triton server binary and Python backend ship in nvidia-pytriton, whose metadata pins
	# numpy<2 and an old tritonclient. We use only its server files: install it without deps.
	$(PY) -m pip install -q --no-deps 'nvidia-pytriton==0.7.0'
	@touch $(STAMP)

install: $(STAMP)

# Train + evaluate + export unless a model is exported already, then serve it: the real Triton
# and the gateway on 127.0.0.1 (URLs printed; Ctrl-C stops).
run: $(STAMP)
	$(PY) -m tools.stack --config $(RUN_CONFIG)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Style, the import layers (docs/architecture.md; contracts in pyproject.toml) and the types.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy contracts serving

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf .cache runs wandb lightning_logs reports .pytest_cache
