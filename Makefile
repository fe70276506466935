# Dormant: `make run` sets up what running needs (the venv with the reference server, CRIU);
# `make test` sets up everything (also the Kubernetes control plane and chromium). Idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HASH := $(shell cat pyproject.toml | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(HASH)
RUN_STAMP := $(VENV)/.run-installed-$(HASH)
# what running needs: the reference server, the load tests and notebooks (the README's commands)
RUN_EXTRAS := refserver,loadtests,notebooks
STATE ?= .state

.PHONY: setup setup-run criu kube image image-optional browser run test test-fast test-gpu lint format bench bench-proxy bench-pool clean help

help:
	@echo "make setup-run - what running needs: .venv with the reference server, load tests, notebooks; CRIU"
	@echo "make setup  - setup-run, every extra (tests, lint, Kubernetes client), and the tests' tools:"
	@echo "make criu   - build CRIU into .venv/bin (part of setup-run)"
	@echo "make kube   - build a Kubernetes API server for the kube tests into .deps/kube, and a real"
	@echo "               node (kubelet, kube-scheduler, kube-proxy; Debian's containerd) into .deps/node (part of setup)"
	@echo "make image  - build Dormant's image (dormant:VERSION, Debian + mmdebstrap, no registry) into .deps/image"
	@echo "               (reused while its inputs do not change)"
	@echo "make image-optional - make image where the real node was built, never failing (part of setup)"
	@echo "make browser - install Debian's chromium for the browser test (part of setup)"
	@echo "make run    - setup-run, then start Dormant on the embedded default config (127.0.0.1:8080)"
	@echo "make test   - setup, then run the whole test suite (real CRIU, servers, processes)"
	@echo "make test-fast - the tests not marked slow"
	@echo "make test-gpu  - the GPU tests only (skipped without an NVIDIA GPU), output shown"
	@echo "make lint   - ruff + mypy"
	@echo "make format - ruff format, then ruff check --fix"
	@echo "make bench  - TTFT warm / after wake / after cold boot, side by side"
	@echo "               BENCH_ARGS='--quick --port N' passes options (python -m loadtests.bench --help)"
	@echo "make bench-proxy - activator overhead vs the upstream directly (wrk), then paced SSE"
	@echo "               streams: direct vs Dormant vs nginx (unpacked into .deps/nginx)"
	@echo "               BENCH_ARGS='--duration 2 --port N' passes options (python -m loadtests.bench_proxy --help)"
	@echo "make bench-pool - three models in room for two: Zipf churn with CRIU vs restart, swap seconds vs bytes"
	@echo "               BENCH_ARGS='--quick' passes options (python -m loadtests.pool_bench --help)"
	@echo "make clean  - remove $(STATE) (the benches' model weights), results and tool caches"

setup-run: $(RUN_STAMP) criu

setup: setup-run $(STAMP) kube image-optional browser

CHECK_PYTHON := $(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Dormant needs Python >= 3.11"'

# The venv for running (a venv with every extra, below, has it already).
$(RUN_STAMP): pyproject.toml
	@if [ -e $(STAMP) ]; then touch $@; exit 0; fi; set -e; $(CHECK_PYTHON); \
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV); \
	$(PY) -m pip install -q --upgrade pip; \
	echo "installing Dormant with [$(RUN_EXTRAS)] into $(VENV)"; \
	$(PY) -m pip install -q -e '.[$(RUN_EXTRAS)]'; \
	rm -f $(VENV)/.run-installed-*; touch $@

$(STAMP): pyproject.toml
	@$(CHECK_PYTHON)
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(RUN_EXTRAS),kube,otel,dev]'
	@rm -f $(VENV)/.installed-* $(VENV)/.run-installed-*
	@touch $@ $(RUN_STAMP)

criu: $(RUN_STAMP)
	@VENV=$(abspath $(VENV)) bash scripts/setup-criu.sh

# kube-apiserver + kube-controller-manager (built once into .deps/kube) and etcd, for the
# `kube` tests; never fails setup (the tests then skip and say why).
# A real node for the kube tests (tests/kube/realnode.py): kubelet, kube-scheduler and
# kube-proxy from the same source package into .deps/node, Debian's containerd, runc and CNI
# plugins; never fails setup either (the real-node tests then skip and say why).
kube: $(STAMP)
	@bash scripts/setup-kube.sh
	@bash scripts/setup-node.sh

# Dormant's image from Debian packages (mmdebstrap, no base image, no registry) as a
# docker-archive in .deps/image: `make image` fails when it cannot build; setup builds it only
# where the real node can use it, and never fails on it.
image: $(STAMP) criu
	@bash scripts/build-image.sh

image-optional: $(STAMP) criu kube
	@if [ -x .deps/node/bin/kubelet ]; then IMAGE_OPTIONAL=1 bash scripts/build-image.sh; fi

# Debian's chromium for the browser test (tests/integration/test_browser.py); never fails
# setup (the test then skips and says why).
browser:
	@bash scripts/setup-browser.sh

# the default state directory ($$DORMANT_STATE_DIR or ~/.local/state/dormant), as every verb uses
run: setup-run
	$(VENV)/bin/dormant up

test: setup
	DORMANT_REQUIRE_CRIU=$$([ -e $(VENV)/bin/criu ] && echo 1) \
	DORMANT_REQUIRE_BROWSER=$$(command -v chromium >/dev/null && echo 1) \
	DORMANT_REQUIRE_KUBE=$$([ -x .deps/kube/bin/kube-apiserver ] && echo 1) \
	DORMANT_REQUIRE_NODE=$$([ -x .deps/node/bin/kubelet ] && [ -f .deps/image/dormant.tar ] && echo 1) \
	$(VENV)/bin/pytest

test-fast: setup
	$(VENV)/bin/pytest -m "not slow"

test-gpu: setup
	$(VENV)/bin/pytest -m gpu -s tests/gpu

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup-run
	$(PY) -m loadtests.bench --out results $(BENCH_ARGS)

bench-proxy: setup-run
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get install -y -qq wrk >/dev/null; } || echo "wrk unavailable: using the Python client"
	@bash scripts/fetch-nginx.sh
	$(PY) -m loadtests.bench_proxy --out results $(BENCH_ARGS)

bench-pool: setup-run
	$(PY) -m loadtests.pool_bench --out results $(BENCH_ARGS)

clean:
	rm -rf $(STATE) results .pytest_cache .ruff_cache .mypy_cache
