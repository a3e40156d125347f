# Accordion developer entry points. `make help` lists them; `make test` and `make demo` are the
# two a newcomer needs, and both install whatever is missing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
CACHE ?= $(or $(ACCORDION_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/accordion)
UV := $(CACHE)/uv-$(UV_VERSION)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
export ACCORDION_CACHE := $(CACHE)
export PATH := $(CURDIR)/$(VENV)/bin:$(CACHE)/bin:$(PATH)

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(UV):
	python3 -m venv $(CACHE)/uv-$(UV_VERSION)
	$(CACHE)/uv-$(UV_VERSION)/bin/pip install --quiet uv==$(UV_VERSION)

.PHONY: deps deps-python deps-system deps-bin
deps: deps-system deps-python deps-bin ## install everything (idempotent; cached by pinned versions)

deps-python: $(UV) ## Python venv from uv.lock (+ the cached Horovod wheel)
	$(UV) sync --frozen --extra trainer
	@if [[ -x trainer/build-horovod.sh ]]; then trainer/build-horovod.sh "$(UV)" "$(PY)"; fi

deps-system: ## Debian packages: prometheus/promtool, openssh-server (the trainer's workers serve SSH)
	@if ! command -v promtool >/dev/null || [[ ! -x /usr/sbin/sshd ]]; then \
	  echo "[deps] installing Debian packages: prometheus openssh-server"; \
	  SUDO=$$( [[ $$(id -u) -eq 0 ]] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus openssh-server >/dev/null; \
	fi

deps-bin: ## Go-built binaries: etcd, kube-*, kubectl, kwok, helm, minio
	@e2e/build.sh >/dev/null

.PHONY: lint typecheck fmt
lint: deps-python ## ruff, import-linter, hadolint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m accordion_operator.crd --check
	$(PY) helm/generate_chart_files.py --check
	@if compgen -G 'Dockerfile.*' >/dev/null; then $(VENV)/bin/hadolint Dockerfile.*; fi

fmt: deps-python ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: deps-python ## mypy (strict on the operator)
	$(VENV)/bin/mypy

.PHONY: test test-unit test-cluster
TEST_STREAMS ?= 2
test: deps lint typecheck ## install what is missing, then lint, types and every test tier
	$(PY) -m pytest -n $(TEST_STREAMS) -m "not kueue" --durations=30
	$(PY) -m pytest -m kueue

test-unit: deps-python ## pure-logic tests only (no cluster)
	$(PY) -m pytest tests/unit

.PHONY: cluster-up cluster-down cluster-status
cluster-up: deps ## start the local cluster (control plane, GPU nodes, MinIO, Prometheus)
	$(PY) -m accordion_dev cluster up

cluster-down: ## stop the local cluster and everything it started
	$(PY) -m accordion_dev cluster down

cluster-status: ## show each component of the local cluster
	$(PY) -m accordion_dev cluster status

.PHONY: demo demo-down
demo: deps ## the main job: local cluster, operator, an elastic MNIST run, an experiment
	$(PY) -m accordion_dev demo

demo-down: ## stop everything the demo started
	$(PY) -m accordion_dev cluster down

.PHONY: crds
crds: deps-python ## regenerate crds/ from the Python models, then the chart's copies
	$(PY) -m accordion_operator.crd
	$(PY) helm/generate_chart_files.py

.PHONY: chart-sync chart-test
chart-sync: deps-python ## copy crds/ into the Helm chart and regenerate its Grafana dashboards
	$(PY) helm/generate_chart_files.py

chart-test: deps ## Helm chart: lint, template tests, promtool alert tests, image recipe
	$(PY) -m pytest tests/chart tests/images tests/unit/operator/test_metrics.py

.PHONY: images images-cuda images-deps test-images
images-deps: ## Debian packages for image builds: buildah, mmdebstrap, skopeo, umoci
	@if ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null || \
	    ! command -v skopeo >/dev/null || ! command -v umoci >/dev/null; then \
	  echo "[deps] installing Debian packages: buildah mmdebstrap skopeo umoci"; \
	  SUDO=$$( [[ $$(id -u) -eq 0 ]] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends buildah mmdebstrap skopeo umoci >/dev/null; \
	fi

images: images-deps ## build the base, operator and trainer images (buildah) and push them to the local registry
	images/build-images.sh

images-cuda: images-deps ## the trainer's CUDA variant (tensorflow[and-cuda]; ~10 GB more cache, 2.7 GB pushed), not in `images`
	images/build-images.sh trainer-cuda

test-images: deps images ## process nodes running the built images; the Helm e2e with them (slow)
	$(PY) -m pytest images/tests

.PHONY: bench
bench: deps ## run the benchmarks under benchmarks/ (writes results as data)
	$(PY) -m benchmarks

.PHONY: rehearse rehearse-demo
rehearse: ## fresh-machine rehearsal: clone HEAD, cold then warm `make test` with empty caches
	e2e/fresh_machine.sh test

rehearse-demo: ## fresh-machine rehearsal of a cold `make demo` with empty caches
	e2e/fresh_machine.sh demo

.PHONY: clean
clean: ## remove the venv and build outputs (keeps the binary cache)
	rm -rf $(VENV) .accordion .pytest_cache .mypy_cache .ruff_cache
