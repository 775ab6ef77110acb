# The commands a newcomer needs. Each target is idempotent: it creates .venv when missing,
# installs when pyproject.toml changed, then does its job.
SHELL := /bin/bash
# The Python 3.11 that makes .venv: PYTHON when given, else python3.11, else python3 when it is
# 3.11 (tools/setup_system.sh venv; it stops, saying how to get 3.11, when none is).
PYTHON ?=
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Real data: point HAM10000_DIR at a HAM10000-layout folder. Unset: synthetic data.
export HAM10000_DIR ?= $(if $(wildcard ../shared/data/ham10000),$(abspath ../shared/data/ham10000),)
export REAL_LESIONS_DIR ?= $(if $(wildcard ../shared/data/real_lesions),$(abspath ../shared/data/real_lesions),)
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
RUN_CONFIG ?= configs/default.yaml

.PHONY: install venv system-packages run test test-fast lint format bench bench-gpu clean check-prod-runtime

# Every target that uses .venv checks first that it is a Python 3.11 one (made when missing; one
# of another Python is reported, never used): milliseconds.
venv:
	@PYTHON='$(PYTHON)' $(SHELL) tools/setup_system.sh venv $(VENV)

# What the tests drive from the system: PostgreSQL, Chromium + chromedriver, docker-compose.
# Installed when missing if root with apt-get (CI); otherwise make stops before any test runs,
# naming them and the apt-get command. SKIP_SYSTEM_CHECK=1 skips the check. `make run` needs none.
system-packages:
	@$(SHELL) tools/setup_system.sh packages

$(STAMP): pyproject.toml | venv
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

test: system-packages $(STAMP)
	$(PY) -m pytest -q

test-fast: system-packages $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Style, the import layers (docs/architecture.md; contracts in pyproject.toml), the types, the
# shell scripts, the Dockerfile and the Kubernetes manifests (against the offline schemas).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy contracts serving
	$(VENV)/bin/shellcheck tools/*.sh .ci/run
	$(VENV)/bin/hadolint Dockerfile.gpu
	@if command -v kubectl >/dev/null; then for d in deploy/k8s deploy/k8s/jobs/*/; do \
	  kubectl kustomize $$d | $(VENV)/bin/kubernetes-validate --strict --quiet - || exit 1; done; \
	else echo "kubectl not installed: deploy/k8s not validated by make lint (the tests still are)"; fi

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) -m benchmarks

# On a CUDA machine: training speed (bf16 vs fp32), a few hundred steps of configs/gpu.yaml,
# export, Triton serving from the GPU behind the gateway; writes docs/benchmarks/gpu.md (< 10 min).
# Without a GPU: `python -m benchmarks.gpu --device cpu` checks every path at toy sizes.
bench-gpu: $(STAMP)
	$(PY) -m benchmarks.gpu

# Production's load path: every model.pt of model_repository/ loaded and run by the torch of the
# production Triton image's PyTorch backend (a side environment of ~5 GB, built once in
# ~/.cache/skinlesion/prod-runtime, ~2 min) and compared with eager (python -m tools.prod_runtime).
# Nothing exported yet: the same check on a freshly exported small model, with the gate and TTA.
check-prod-runtime: $(STAMP)
	@if compgen -G 'model_repository/*/[0-9]*/model.pt' > /dev/null; then \
		$(PY) -m tools.prod_runtime --repository model_repository; \
	else \
		echo "model_repository/ holds no model.pt: checking a freshly exported small model"; \
		$(PY) -m pytest -q -s -p no:cacheprovider tests/deploy/test_prod_runtime.py \
			-k production_torch_loads_every_version; \
	fi

clean:
	rm -rf .cache runs wandb lightning_logs reports .pytest_cache
