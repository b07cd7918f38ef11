# pgherd: a Kubernetes operator for highly available PostgreSQL.
# `make run` and `make test` set up everything they need themselves (idempotently).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
export TOOLS_BIN := $(CURDIR)/.tools/bin
export PATH := $(TOOLS_BIN):$(CURDIR)/$(VENV)/bin:$(PATH)

include hack/versions.env

# Debian packages the tests and `make run` use (installed when missing and running as root).
DEB_PACKAGES := postgresql-15 postgresql-client-15

PYTEST_ARGS ?=

##@ Newcomer

.PHONY: run
run: venv tools ## Bring up the local control plane and show how to connect
	@$(PY) -m pgherd_dev.cli cluster status >/dev/null 2>&1 || $(PY) -m pgherd_dev.cli cluster up
	@echo "kubectl is at $(TOOLS_BIN)/kubectl; try: KUBECONFIG=$(CURDIR)/.local/cluster/kubeconfig kubectl get nodes -L topology.kubernetes.io/zone"

.PHONY: test
test: venv deps tools lint ## Run the whole suite: lint, unit tests, control-plane tests
	$(PY) -m pytest $(PYTEST_ARGS)

##@ Development

.PHONY: help
help: ## List targets
	@awk 'BEGIN {FS = ":.*##"} /^##@/ {printf "\n%s\n", substr($$0, 5)} /^[a-zA-Z_-]+:.*##/ {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: venv
venv: $(VENV_STAMP) ## Create the virtualenv from requirements.lock

$(VENV_STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python >= 3.11 is required (found $$($(PYTHON) --version))"; exit 2; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

.PHONY: lock
lock: ## Re-resolve requirements.lock from pyproject.toml
	@test -x $(VENV)/bin/uv || $(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes --quiet -o requirements.lock

.PHONY: deps
deps: ## Install missing Debian packages (when root)
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "error: missing Debian packages: $$missing (install them, or run as root)"; exit 2; fi; \
	fi

.PHONY: tools
tools: ## Build the pinned tools (cached outside the clone; only missing ones are built)
	@hack/build-tools.sh

.PHONY: cluster-up
cluster-up: venv tools ## Start the local control plane (prints KUBECONFIG)
	@$(PY) -m pgherd_dev.cli cluster up

.PHONY: cluster-down
cluster-down: venv ## Stop the local control plane and clear its data
	@$(PY) -m pgherd_dev.cli cluster down

.PHONY: cluster-status
cluster-status: venv ## Show the local control plane's processes
	@$(PY) -m pgherd_dev.cli cluster status

.PHONY: lint
lint: venv ## ruff, and mypy --strict on operator/
	$(VENV)/bin/ruff check operator tests
	$(VENV)/bin/ruff format --check operator tests
	$(VENV)/bin/mypy

.PHONY: fmt
fmt: venv ## Format the code
	$(VENV)/bin/ruff format operator tests
	$(VENV)/bin/ruff check --fix operator tests
