# pixiou-repro: `make repro` runs the study, `make test` runs the tests. Both install first.
#
# The install is three stamped steps in $(VENV), each redone only when its inputs change:
#   .venv/.stamp-mmcv-<torch build>   torch 2.13 (cpu, or e.g. cu126) + mmcv 2.1.0 built with its
#                       compiled ops against it (slow the first time; the built wheel is cached
#                       per torch build, so later installs take seconds and never get a wheel
#                       built against another torch build)
#   .venv/.stamp-base   the package and its pinned dependencies (pyproject.toml)
#   .venv/.stamp-dev    plus the dev extras (pytest, ruff, hypothesis)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# GPU users: TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (same torch version).
TORCH_INDEX_URL ?=
TORCH_INDEX := $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL) --extra-index-url https://pypi.org/simple,)
# The torch build: 'cpu', or the index's last path part (cu126). A change of build reinstalls
# torch and mmcv. The CPU build's mmcv wheel sits in pip's own cache; every other build's in a
# cache of its own, so pip never hands one build's compiled mmcv to another.
TORCH_BUILD := $(if $(TORCH_INDEX_URL),$(notdir $(patsubst %/,%,$(TORCH_INDEX_URL))),cpu)
# A CUDA build compiles mmcv's ops for these GPU architectures. Unset, torch would compile for
# the GPUs it sees, none in a container build. 7.0 V100, 8.0 A100, 8.6 A10/A40, 8.9 L4/L40,
# 9.0 H100/H200, +PTX for later ones (JIT-compiled by the driver). Override as usual:
# make install TORCH_INDEX_URL=... TORCH_CUDA_ARCH_LIST="9.0"
TORCH_CUDA_ARCH_LIST ?= 7.0;8.0;8.6;8.9;9.0+PTX
ARCH_KEY := $(if $(filter cpu,$(TORCH_BUILD)),,-sm$(subst ;,_,$(subst +PTX,ptx,$(subst .,,$(TORCH_CUDA_ARCH_LIST)))))
MMCV_STAMP := $(VENV)/.stamp-mmcv-$(TORCH_BUILD)$(ARCH_KEY)
# The built wheel's cache is keyed by the torch build and the architectures it was built for
MMCV_CACHE := $(if $(filter cpu,$(TORCH_BUILD)),,--cache-dir $(HOME)/.cache/pixiou-repro/pip-$(TORCH_BUILD)$(ARCH_KEY))
MMCV_ARCH := $(if $(filter cpu,$(TORCH_BUILD)),,TORCH_CUDA_ARCH_LIST="$(TORCH_CUDA_ARCH_LIST)" FORCE_CUDA=1)
MMCV_JOBS ?= $(shell nproc)
PYTEST_ARGS ?=
# make ui: the MLflow UI of the study's store, on this machine only unless you say otherwise
UI_HOST ?= 127.0.0.1
UI_PORT ?= 5000
# One uvicorn worker serves one person browsing; MLflow's default of 4 took 12-13 CPU s and
# 9-10 s to answer here, 1 took 4.5-4.8 CPU s and 6.5 s (2026-12-01, /health on an empty store)
UI_WORKERS ?= 1
MLFLOW_STORE ?= sqlite:///mlflow.db
# MLflow 3's server also starts a job runner (seven huey consumers, for its GenAI jobs) that a
# tracking UI never uses: without it `make ui` answers in about half the time and stops at once.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION ?= false

export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PATH := $(CURDIR)/$(BIN):$(PATH)  # DVC stage commands run the venv's python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install install-dev browser repro test test-fast lint bench ui status clean plan gpu-check

help:
	@echo "make repro   install (.venv) and run the study: dvc repro"
	@echo "make test    install (.venv, with dev extras) and run the test suite (what CI runs)"
	@echo "make test-fast  the unit tier: no Ray cluster, sweep, dvc repro or servers"
	@echo "make bench   benchmarks: losses, training step, sweep parallel efficiency, evaluation cost (reports/bench/runs/)"
	@echo "make ui      the MLflow UI of the study on http://127.0.0.1:5000 (UI_PORT=...)"
	@echo "make status  where a running study stands (from MLflow and results/)"
	@echo "make plan    what the study in params.yaml will cost (GPU-hours), before it starts"
	@echo "make gpu-check  on a GPU machine: tests/gpu, the losses at GPU shapes, fp32 vs AMP"
	@echo "make lint    ruff"

$(BIN)/python:
	@echo ">>> creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24"

$(MMCV_STAMP): constraints.txt | $(BIN)/python
	@echo ">>> [1/3] torch 2.13.0 ($(TORCH_BUILD) build) and mmcv's build tools"
	rm -f $(VENV)/.stamp-mmcv*  # another torch build's (or the old unnamed one)
	$(PIP) install --quiet --force-reinstall --no-deps $(TORCH_INDEX) torch==2.13.0
	$(PIP) install --quiet $(TORCH_INDEX) torch==2.13.0 wheel ninja psutil mmengine==0.10.7
	@echo ">>> [2/3] mmcv 2.1.0 with compiled ops. Built from source the first time (about"
	@echo "    13 minutes on 2 cores), progress below, full log in $(VENV)/mmcv-build.log."
	@echo "    pip caches the built wheel: later installs reuse it in seconds."
	@# mmcv's setup.py imports pkg_resources and torch: it builds in this env, with setuptools<70
	$(PIP) install --quiet "setuptools<70"
	MMCV_WITH_OPS=1 MAX_JOBS=$(MMCV_JOBS) $(MMCV_ARCH) $(PIP) install -v --no-build-isolation --force-reinstall \
	  --no-deps $(MMCV_CACHE) mmcv==2.1.0 \
	  2>&1 | tee $(VENV)/mmcv-build.log \
	  | sed -nE -u 's#^ *(\[[0-9]+/[0-9]+\]).* -c [^ ]*/(mmcv/ops/[^ ]+).*#    \1 compiling \2#p; s#^ *(Using cached mmcv.*|Successfully installed.*|ERROR.*)#    \1#p'
	$(BIN)/python -c "import mmcv, mmcv.ops; print('    mmcv', mmcv.__version__, 'with compiled ops')"
	touch $@

$(VENV)/.stamp-base: pyproject.toml $(MMCV_STAMP)
	@echo ">>> [3/3] pixiou-repro and its pinned dependencies"
	$(PIP) install --quiet "setuptools>=77.0.3,<81" -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-base
	@echo ">>> dev extras"
	$(PIP) install --quiet -e ".[dev]"
	touch $@

# Says which builds the venv holds (a CPU torch, or which CUDA), whenever it installs.
BUILDS = $(BIN)/python -c "import torch, mmcv, mmseg; print('>>> installed: torch', \
  torch.__version__, '(CUDA ' + torch.version.cuda + ')' if torch.version.cuda else '(CPU)', \
  '| mmcv', mmcv.__version__, '| mmsegmentation', mmseg.__version__)"

install: $(VENV)/.stamp-base
	@$(BUILDS)
install-dev: $(VENV)/.stamp-dev
	@$(BUILDS)

# The UI test drives Debian's headless Chromium (no browser download of its own). Without root
# or passwordless sudo it cannot be installed: that one test is then skipped, outside CI.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo ">>> not installing Debian's chromium (needs root or passwordless sudo): the"; \
	       echo "    MLflow UI browser test will be skipped. As root: apt-get install chromium"; \
	       exit 0; fi; \
	  echo ">>> installing Debian's chromium for the MLflow UI test"; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

repro: install
	dvc repro
	@echo "make repro: tables in reports/tables.md, figures in reports/figures/;"
	@echo "  dvc metrics show / dvc plots show compare them; make ui browses the runs."

# Two pytest-xdist workers: in one process the tests leave the two cores idle 42% of the time
# (waiting on Ray, servers, deliberate outages; docs/testing.md). xdist's loadgroup scheduler
# hands each worker one test at a time (none is grouped: pytest 9.2's node ids drop xdist's
# group suffix), in the order tests/conftest.py sorts them, the longest first.
XDIST ?= -n 2 --dist loadgroup --no-loadscope-reorder
test: install-dev browser
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The unit tier: no Ray cluster, no sweep, no `dvc repro`, no servers (tests marked slow, or
# using a fixture that trains or starts servers: tests/conftest.py SLOW_FIXTURES), on two
# pytest-xdist workers.
test-fast: install-dev
	$(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check pipeline tests bench

# Each `make bench` writes its records to a folder of its own (BENCH_OUT); the table of
# docs/benchmarks.md is generated from the committed ones in reports/bench/ (bench.table --write).
ifeq ($(origin BENCH_OUT),undefined)
BENCH_OUT := reports/bench/runs/$(shell date +%Y%m%d-%H%M%S)
endif

bench: install
	@echo ">>> the generated VOC data the sweep benchmark trains on"
	$(BIN)/dvc repro data@synthetic_voc
	$(BIN)/python -m bench.losses --out $(BENCH_OUT)/losses.json
	$(BIN)/python -m bench.train_step --out $(BENCH_OUT)/train_step.json
	$(BIN)/python -m bench.sweep_parallel --out $(BENCH_OUT)/sweep_parallel.json
	$(BIN)/dvc repro pretrain@synthetic_voc
	$(BIN)/python -m bench.evaluation --out $(BENCH_OUT)/evaluation.json
	$(BIN)/python -m bench.table $(BENCH_OUT)
	@echo ">>> records in $(BENCH_OUT)/. To make them the committed ones (docs/benchmarks.md):"
	@echo "    cp $(BENCH_OUT)/*.json reports/bench/ && $(BIN)/python -m bench.table --write"

ui: install
	@echo ">>> MLflow UI of $(MLFLOW_STORE) on http://$(UI_HOST):$(UI_PORT) (Ctrl-C stops it)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$(MLFLOW_SERVER_ENABLE_JOB_EXECUTION) \
	  $(BIN)/mlflow ui --backend-store-uri $(MLFLOW_STORE) --host $(UI_HOST) --port $(UI_PORT) \
	  --workers $(UI_WORKERS)

# What the study will cost: trials, evaluations, checkpoints and GPU-hours per dataset, from
# params.yaml alone (no data, no Ray). PLAN_ARGS=--json for the same numbers as JSON.
PLAN_ARGS ?=
plan: install
	@$(BIN)/python -m pipeline.plan $(PLAN_ARGS)

# On a machine with a GPU (docs/gpu.md, "make gpu-check"): one report under reports/gpu/.
gpu-check: install-dev
	$(BIN)/python -m bench.gpu_check --out reports/gpu

# Where a study that runs in another terminal stands. Reads only (no install: the study's venv).
status:
	@$(BIN)/python -m pipeline.status

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
